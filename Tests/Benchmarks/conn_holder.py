#!/usr/bin/env python3
"""Holds thousands of idle TCP connections for purge_bench.py.

Runs inside a network namespace (`ip netns exec NS python3 conn_holder.py ROLE`) and obeys one JSON
command per line on stdin, answering one JSON line on stdout. Outside `serve` it does nothing
between commands, so it takes no CPU while the benchmark times a purge.

A process may hold only RLIMIT_NOFILE descriptors (20,000 here, and no CAP_SYS_RESOURCE to raise
the hard limit), so the benchmark runs several holders per side:
  client  connect / reap / abort: non-blocking connects in batches; `reap` closes the sockets that
          were destroyed (SOCK_DESTROY or `ss -K` leave them in error).
  server  listen (SO_REUSEPORT, so all server holders share each port) / serve / stop / reap:
          `serve` accepts until `stop` arrives on stdin; `reap` closes the sockets the peer reset.

Both exit when stdin closes or when the parent dies (PR_SET_PDEATHSIG), so a benchmark that is
killed leaves no holder behind.
"""

import ctypes
import errno
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time

PR_SET_PDEATHSIG = 1
DEAD = select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP | select.EPOLLIN
LINGER_ABORT = struct.pack("ii", 1, 0)  # close() sends RST: no FIN, no TIME_WAIT left behind
RESERVED_FDS = 64


def close_socket(sock, abort=True):
    """Closes a socket; with ``abort``, by an RST (SO_LINGER 0): no FIN exchange, no TIME_WAIT left."""
    if abort:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ABORT)
        except OSError:
            pass
    sock.close()


def die_with_parent():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent was gone before prctl took effect
        sys.exit(1)


def raise_nofile():
    """Soft limit up to the hard limit (raising the hard one needs CAP_SYS_RESOURCE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (hard, 1 << 20):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class LineReader:
    """Unbuffered line reads from a descriptor, so epoll on it never misses a buffered line."""

    def __init__(self, fd):
        self.fd = fd
        self.buffer = b""

    def has_line(self):
        return b"\n" in self.buffer

    def readline(self):
        while b"\n" not in self.buffer:
            chunk = os.read(self.fd, 65536)
            if not chunk:
                line, self.buffer = self.buffer, b""
                return line.decode()
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode() + "\n"


class Holder:
    def __init__(self, capacity):
        self.capacity = capacity
        self.ep = select.epoll()  # held connections; polled only in commands
        self.conns = {}  # fd -> (socket object or None, key)
        self.live = {}  # key -> count

    def _add(self, fd, sock, key):
        self.conns[fd] = (sock, key)
        self.live[key] = self.live.get(key, 0) + 1
        self.ep.register(fd, DEAD)

    def _close(self, fd, abort=False):
        sock, key = self.conns.pop(fd)
        self.live[key] -= 1
        try:
            self.ep.unregister(fd)
        except OSError:
            pass
        if sock is None:
            sock = socket.socket(fileno=fd)
        close_socket(sock, abort)

    def counts(self):
        return {k: v for k, v in self.live.items() if v}

    def cmd_reap(self, settle=0.0):
        """Close every held connection that is in error, reset or half-closed."""
        deadline = time.monotonic() + settle
        closed = 0
        while True:
            events = self.ep.poll(0, 8192)
            for fd, _ in events:
                if fd in self.conns:
                    self._close(fd)
                    closed += 1
            if not events:
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
        return {"closed": closed, "live": self.counts()}

    def cmd_abort(self, key):
        """Close every connection of one key with RST (cleanup after a run that left them alive)."""
        fds = [fd for fd, (_, k) in self.conns.items() if k == key]
        for fd in fds:
            self._close(fd, abort=True)
        return {"closed": len(fds), "live": self.counts()}


class Server(Holder):
    def __init__(self, capacity, stdin):
        super().__init__(capacity)
        self.listeners = {}  # fd -> (socket, key)
        self.stdin = stdin

    def cmd_listen(self, ip, port):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind((ip, port))
        s.listen(1 << 20)  # capped by net.core.somaxconn of the server namespace
        s.setblocking(False)
        self.listeners[s.fileno()] = (s, f"{ip}:{port}")
        return {"listening": f"{ip}:{port}"}

    def _accept_all(self, fd):
        lsock, key = self.listeners[fd]
        accepted = 0
        while len(self.conns) < self.capacity:
            try:
                cfd, _ = lsock._accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:
                continue
            self._add(cfd, None, key)
            accepted += 1
        return accepted

    def cmd_serve(self):
        """Accept on every listener until a `stop` line arrives on stdin; then drain and answer."""
        sys.stdout.write(json.dumps({"serving": True}) + "\n")
        sys.stdout.flush()
        control = select.epoll()
        control.register(self.stdin.fd, select.EPOLLIN)
        for fd in self.listeners:
            control.register(fd, select.EPOLLIN)
        accepted = 0
        full = False
        try:
            while not self.stdin.has_line():
                stop = False
                for fd, _ in control.poll(1.0):
                    if fd == self.stdin.fd:
                        stop = True
                    elif fd in self.listeners:
                        accepted += self._accept_all(fd)
                        if len(self.conns) >= self.capacity and not full:
                            full = True  # leave the rest queued: the totals will show it
                            for lfd in self.listeners:
                                control.unregister(lfd)
                if stop:
                    break
        finally:
            control.close()
        line = self.stdin.readline()
        if not line:
            sys.exit(0)
        if json.loads(line).get("cmd") != "stop":
            raise RuntimeError(f"expected stop, got {line!r}")
        if not full:
            for fd in self.listeners:
                accepted += self._accept_all(fd)
        return {"accepted": accepted, "full": full, "live": self.counts()}

    def cmd_drain(self):
        """Accept what is still queued (a late final ACK) without serving."""
        accepted = sum(self._accept_all(fd) for fd in self.listeners)
        return {"accepted": accepted, "live": self.counts()}


class Client(Holder):
    def cmd_connect(self, dst, port, n, batch=1024, timeout=120.0):
        key = f"{dst}:{port}"
        if len(self.conns) + n > self.capacity:
            raise RuntimeError(f"{n} more connections exceed this holder's capacity {self.capacity}")
        ok = failed = 0
        errors = {}

        def fail(name):
            nonlocal failed
            failed += 1
            errors[name] = errors.get(name, 0) + 1

        started = time.monotonic()
        deadline = started + timeout
        addr = (dst, port)
        remaining = n
        while remaining > 0 and time.monotonic() < deadline:
            pending = {}
            count = min(batch, remaining)
            remaining -= count
            for _ in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                rc = s.connect_ex(addr)
                if rc not in (0, errno.EINPROGRESS):
                    fail(errno.errorcode.get(rc, str(rc)))
                    s.close()
                    continue
                pending[s.fileno()] = s
                self.ep.register(s.fileno(), DEAD | select.EPOLLOUT)
            while pending and time.monotonic() < deadline:
                for fd, ev in self.ep.poll(1.0, 8192):
                    s = pending.pop(fd, None)
                    if s is None:
                        if fd in self.conns:
                            self._close(fd)  # an older connection died meanwhile
                        continue
                    if ev & DEAD:
                        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        fail(errno.errorcode.get(err, str(err)) if err else "closed")
                        self.ep.unregister(fd)
                        s.close()
                    else:
                        self.ep.modify(fd, DEAD)
                        self.conns[fd] = (s, key)
                        self.live[key] = self.live.get(key, 0) + 1
                        ok += 1
            for fd, s in pending.items():
                self.ep.unregister(fd)
                s.close()
                fail("timeout")
        if remaining:
            errors["timeout"] = errors.get("timeout", 0) + remaining
            failed += remaining
        return {"connected": ok, "failed": failed, "errors": errors,
                "seconds": round(time.monotonic() - started, 3), "live": self.counts()}


def main():
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the benchmark handles Ctrl-C and closes our stdin
    role = sys.argv[1]
    nofile = raise_nofile()
    capacity = nofile - RESERVED_FDS
    stdin = LineReader(sys.stdin.fileno())
    holder = Server(capacity, stdin) if role == "server" else Client(capacity)
    out = sys.stdout
    out.write(json.dumps({"ready": role, "pid": os.getpid(), "capacity": capacity}) + "\n")
    out.flush()
    while True:
        line = stdin.readline()
        if not line:
            break
        line = line.strip()
        if not line:
            continue
        request = json.loads(line)
        name = request.pop("cmd")
        if name == "quit":
            break
        try:
            reply = getattr(holder, "cmd_" + name)(**request)
        except Exception as error:  # report and keep serving: the benchmark decides
            reply = {"error": f"{type(error).__name__}: {error}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
