"""The ``churn`` role of the traffic peer: a steady stream of TCP connections toward many targets,
each held until it ends, for the soak (Tests/Soak). lab.traffic.ChurnPeer drives it.

Every connection is a non-blocking connect to a random target; it is never closed by the peer while
the stream runs, so each one ends only by what the network or the agent does to it, and every end is
counted by target and by how it ended (``connect:ECONNREFUSED``, ``connect:ECONNABORTED`` for a
connect the agent destroyed, ``ECONNABORTED`` for an established connection it destroyed, ``EOF``...).

Requests:
- ``start`` ``{"targets": [ADDR, ...], "port": P, "rate": R, "seed": S}``: R connects a second from now on.
- ``pause``: no new connects; what is held stays.
- ``tally``: per target ``made``, ``established``, ``live``, ``pending`` and ``ended`` {how: count}.
- ``finish`` ``{"settle": SECONDS}``: no new connects; waits up to SETTLE for pending connects to end,
  then looks at each held connection once more (a byte-less peek: ``alive`` or how it ended), closes
  every one with an RST and answers the final tally.
"""

from __future__ import annotations

import errno
import random
import select
import socket
import sys
import time

from lab.peer.bulk import LineReader, close_socket, die_with_parent, raise_nofile
from lab.peer.protocol import errno_name, greet, respond

DEAD = select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP | select.EPOLLIN
MOST_CONNECTS_PER_TURN = 50   # a late turn catches up a little, never in one burst


def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class Churn:
    def __init__(self, stdin: LineReader) -> None:
        self.stdin = stdin
        self.ep = select.epoll()
        self.ep.register(stdin.fd, select.EPOLLIN)
        self.targets: list[str] = []
        self.port = 0
        self.rate = 0.0
        self.next_at = 0.0
        self.random = random.Random()
        self.held: dict[int, tuple[socket.socket, str, bool]] = {}   # fd -> (socket, target, still connecting)
        self.counts: dict[str, dict] = {}

    def _count(self, target: str) -> dict:
        return self.counts.setdefault(target, {"made": 0, "established": 0, "ended": {}})

    def _end(self, fd: int, how: str) -> None:
        sock, target, _ = self.held.pop(fd)
        ended = self._count(target)["ended"]
        ended[how] = ended.get(how, 0) + 1
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        close_socket(sock)

    def _connect(self) -> None:
        target = self.random.choice(self.targets)
        sock = socket.socket(family_of(target), socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self._count(target)["made"] += 1
        code = sock.connect_ex((target, self.port))
        if code not in (0, errno.EINPROGRESS):
            ended = self._count(target)["ended"]
            how = f"connect:{errno_name(code)}"
            ended[how] = ended.get(how, 0) + 1
            sock.close()
            return
        self.held[sock.fileno()] = (sock, target, True)
        self.ep.register(sock.fileno(), DEAD | select.EPOLLOUT)

    def _handle(self, fd: int) -> None:
        sock, target, connecting = self.held[fd]
        if connecting:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._end(fd, f"connect:{errno_name(code)}")
                return
            self.held[fd] = (sock, target, False)
            self._count(target)["established"] += 1
            self.ep.modify(fd, DEAD)
            return
        how = self._look(sock)
        if how != "alive":
            self._end(fd, how)

    @staticmethod
    def _look(sock: socket.socket) -> str:
        """How a held connection stands, without taking anything from it: the owner's next recv."""
        try:
            data = sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return "alive"
        except OSError as error:
            return errno_name(error.errno)
        return "EOF" if data == b"" else "data"

    def tally(self) -> dict:
        live: dict[str, int] = {}
        pending: dict[str, int] = {}
        for _, target, connecting in self.held.values():
            bucket = pending if connecting else live
            bucket[target] = bucket.get(target, 0) + 1
        return {"targets": {t: {**c, "live": live.get(t, 0), "pending": pending.get(t, 0)} for t, c in self.counts.items()},
                "held": len(self.held)}

    def op_start(self, request: dict) -> dict:
        self.targets = list(request["targets"])
        self.port = int(request["port"])
        self.rate = float(request["rate"])
        self.random.seed(request.get("seed"))
        self.next_at = time.monotonic()
        return {}

    def op_pause(self, request: dict) -> dict:
        self.rate = 0.0
        return {}

    def op_tally(self, request: dict) -> dict:
        return self.tally()

    def op_finish(self, request: dict) -> dict:
        self.rate = 0.0
        deadline = time.monotonic() + float(request.get("settle", 10))
        while any(connecting for _, _, connecting in self.held.values()) and time.monotonic() < deadline:
            self._turn(0.1)
        final: dict[str, dict] = {}
        for fd in list(self.held):
            sock, target, connecting = self.held[fd]
            how = "pending" if connecting else self._look(sock)
            entry = final.setdefault(target, {})
            entry[how] = entry.get(how, 0) + 1
            self._end(fd, f"finish:{how}")
        return {**self.tally(), "final": final}

    def _turn(self, wait: float) -> None:
        for fd, _ in self.ep.poll(wait, 4096):
            if fd in self.held:
                self._handle(fd)

    def run(self) -> None:
        while True:
            if self.stdin.has_line():
                line = self.stdin.readline()
                if not line or not respond(self, line):
                    return
                continue
            now = time.monotonic()
            wait = 1.0 if self.rate <= 0 else max(0.0, self.next_at - now)
            for fd, _ in self.ep.poll(min(wait, 1.0), 4096):
                if fd == self.stdin.fd:
                    line = self.stdin.readline()
                    if not line or not respond(self, line):
                        return
                elif fd in self.held:
                    self._handle(fd)
            if self.rate > 0:
                made = 0
                while self.next_at <= time.monotonic() and made < MOST_CONNECTS_PER_TURN:
                    self._connect()
                    self.next_at += 1.0 / self.rate
                    made += 1
                if self.next_at < time.monotonic() - 1.0:
                    self.next_at = time.monotonic()   # fell far behind (a stalled machine): do not burst


def main(role: str, args: list[str]) -> int:
    die_with_parent()
    raise_nofile()
    churn = Churn(LineReader(sys.stdin.fileno()))
    greet(role)
    churn.run()
    return 0
