"""The ``sockets`` role of the traffic peer: a few sockets with identities, inside a namespace.

``Namespace.peer()`` (lab.traffic.Peer) starts it and speaks the protocol (protocol.py) for you.

Requests (``op`` names the operation):

- ``listen``  ``{"proto": "tcp"|"udp", "host": "0.0.0.0"|"::"|ADDR, "port": P, "v6only": false}``
  starts an echo server (TCP: echoes every byte on every accepted connection; UDP: sends each
  datagram back to its sender). ``host "::"`` with v6only false is dual-stack. Answers ``id``
  and the bound ``port`` (pass port 0 for any). UDP replies leave from the address the datagram
  came to only if the socket is bound to that address: bind UDP servers to specific addresses
  when a host owns several.
- ``connect`` ``{"proto": "tcp"|"udp", "host": ADDR, "port": P, "count": 1, "wait": true,
  "timeout": 5, "family": "inet"|"inet6"}`` opens ``count`` client sockets. ``family`` defaults
  to inet6 when host contains ':' (so ``::ffff:10.0.0.2`` gives a dual-stack AF_INET6 socket).
  With ``wait`` false a TCP connect is started non-blocking and left pending (see
  ``connect_status``). Answers ``ids`` and ``locals`` (``ADDR:PORT`` / ``[ADDR]:PORT``).
- ``probe`` ``{"ids": [...], "timeout": 2}`` checks each client socket: first a non-blocking
  recv (a destroyed socket reports its error here, e.g. ``ECONNABORTED``), then one byte is sent
  and must come back within the timeout. Answers ``results``, one per id, in order: ``"ok"``, an
  errno name, ``"eof"``, ``"timeout"``, ``"closed"`` or ``"unknown-id"``.
- ``connect_status`` ``{"ids": [...], "timeout": 0}`` waits up to timeout (seconds, shared) for
  pending non-blocking connects. Answers ``results`` (``"pending"``, ``"ok"`` or the errno name
  from SO_ERROR), ``elapsed`` (when each result was seen, in seconds after the request) and
  ``since_connect`` (the same, in seconds after its connect began).
- ``state`` ``{"ids": [...]}``: each socket's state without writing to it: ``"ok"``, ``"eof"`` or
  the errno name its next recv reports (what the peer sent stays queued).
- ``stats`` ``{"id": LISTENER}`` answers ``accepted`` (TCP connections) or ``datagrams`` (UDP).
- ``close`` ``{"ids": [...]}`` closes client sockets. ``quit`` closes everything and exits.
"""

from __future__ import annotations

import errno
import os
import resource
import selectors
import socket
import threading
import time

from lab.peer.protocol import errno_name, greet, serve_lines


def endpoint(address) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def family_for(host: str, requested: str | None) -> int:
    if requested:
        return socket.AF_INET6 if requested == "inet6" else socket.AF_INET
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class EchoLoop(threading.Thread):
    """Serves every listener and accepted connection from one selector thread."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="echo")
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.selector.register(self.wake_r, selectors.EVENT_READ, ("wake", None))
        self.pending: list[tuple[str, socket.socket, dict]] = []
        self.lock = threading.Lock()
        self.stopping = False

    def add(self, kind: str, sock: socket.socket, stats: dict) -> None:
        with self.lock:
            self.pending.append((kind, sock, stats))
        os.write(self.wake_w, b"x")

    def stop(self) -> None:
        self.stopping = True
        os.write(self.wake_w, b"x")

    def run(self) -> None:
        while not self.stopping:
            for key, _ in self.selector.select(timeout=1.0):
                kind, stats = key.data
                if kind == "wake":
                    try:
                        os.read(self.wake_r, 4096)
                    except BlockingIOError:
                        pass
                    with self.lock:
                        added, self.pending = self.pending, []
                    for kind_added, sock, stats_added in added:
                        self.selector.register(sock, selectors.EVENT_READ, (kind_added, stats_added))
                elif kind == "tcp-listen":
                    self._accept(key.fileobj, stats)
                elif kind == "tcp-conn":
                    self._echo_stream(key.fileobj)
                elif kind == "udp":
                    self._echo_datagram(key.fileobj, stats)
        for key in list(self.selector.get_map().values()):
            if key.fileobj != self.wake_r:
                key.fileobj.close()

    def _accept(self, listener: socket.socket, stats: dict) -> None:
        for _ in range(256):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            conn.setblocking(False)
            stats["accepted"] += 1
            self.selector.register(conn, selectors.EVENT_READ, ("tcp-conn", None))

    def _echo_stream(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
            if data:
                conn.send(data)
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self.selector.unregister(conn)
        conn.close()

    def _echo_datagram(self, sock: socket.socket, stats: dict) -> None:
        for _ in range(256):
            try:
                data, sender = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error queued on the socket: nothing to echo
            stats["datagrams"] += 1
            try:
                sock.sendto(data, sender)
            except OSError:
                pass


class Peer:
    def __init__(self) -> None:
        self.loop = EchoLoop()
        self.loop.start()
        self.listeners: dict[int, tuple[socket.socket, dict]] = {}
        self.clients: dict[int, socket.socket] = {}
        self.connect_started: dict[int, float] = {}   # when each client's connect began
        self.next_id = 1

    def _new_id(self) -> int:
        value = self.next_id
        self.next_id += 1
        return value

    def op_listen(self, request: dict) -> dict:
        proto = request.get("proto", "tcp")
        host = request.get("host", "::")
        family = family_for(host, request.get("family"))
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(family, kind)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if request.get("v6only") else 0)
        sock.bind((host, int(request["port"])))
        if proto == "tcp":
            sock.listen(int(request.get("backlog", 4096)))
        sock.setblocking(False)
        stats = {"accepted": 0, "datagrams": 0}
        ident = self._new_id()
        self.listeners[ident] = (sock, stats)
        self.loop.add("tcp-listen" if proto == "tcp" else "udp", sock, stats)
        return {"id": ident, "port": sock.getsockname()[1]}

    def op_connect(self, request: dict) -> dict:
        proto = request.get("proto", "tcp")
        host = request["host"]
        port = int(request["port"])
        family = family_for(host, request.get("family"))
        wait = request.get("wait", True)
        timeout = float(request.get("timeout", 5))
        ids, locals_ = [], []
        started = time.monotonic()
        for _ in range(int(request.get("count", 1))):
            sock = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                if proto == "tcp":
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if request.get("source"):
                    sock.bind((request["source"], 0))
                if wait or proto != "tcp":
                    sock.settimeout(timeout)
                    sock.connect((host, port))
                else:
                    sock.setblocking(False)
                    code = sock.connect_ex((host, port))
                    if code not in (0, errno.EINPROGRESS):
                        raise OSError(code, os.strerror(code))
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            ident = self._new_id()
            self.clients[ident] = sock
            self.connect_started[ident] = started
            ids.append(ident)
            locals_.append(endpoint(sock.getsockname()))
        return {"ids": ids, "locals": locals_}

    def op_state(self, request: dict) -> dict:
        """Each client socket's state, without writing to it: "ok" (open; what the peer sent stays
        queued), "eof", or the errno name its next recv reports."""
        results = []
        for ident in (int(i) for i in request["ids"]):
            sock = self.clients.get(ident)
            if sock is None or sock.fileno() < 0:
                results.append("unknown-id" if sock is None else "closed")
                continue
            try:
                results.append("eof" if sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"" else "ok")
            except (BlockingIOError, InterruptedError):
                results.append("ok")
            except OSError as error:
                results.append(errno_name(error.errno))
        return {"results": results}

    def op_probe(self, request: dict) -> dict:
        ids = [int(i) for i in request["ids"]]
        timeout = float(request.get("timeout", 2))
        results: dict[int, str] = {}
        waiting = selectors.DefaultSelector()
        for ident in ids:
            sock = self.clients.get(ident)
            if sock is None:
                results[ident] = "unknown-id"
                continue
            if sock.fileno() < 0:
                results[ident] = "closed"
                continue
            # The owner's next recv: this is where a destroyed socket reports ECONNABORTED.
            try:
                data = sock.recv(1, socket.MSG_DONTWAIT)
                results[ident] = "eof" if data == b"" else "stray-data"
                continue
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as error:
                results[ident] = errno_name(error.errno)
                continue
            try:
                sock.send(b"p", socket.MSG_DONTWAIT)
            except OSError as error:
                results[ident] = errno_name(error.errno)
                continue
            waiting.register(sock, selectors.EVENT_READ, ident)
        deadline = time.monotonic() + timeout
        while waiting.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for key, _ in waiting.select(timeout=left):
                ident = key.data
                try:
                    data = key.fileobj.recv(1, socket.MSG_DONTWAIT)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as error:
                    results[ident] = errno_name(error.errno)
                else:
                    results[ident] = "ok" if data == b"p" else ("eof" if data == b"" else "stray-data")
                waiting.unregister(key.fileobj)
        for key in list(waiting.get_map().values()):
            results[key.data] = "timeout"
        waiting.close()
        return {"results": [results[i] for i in ids]}

    def op_connect_status(self, request: dict) -> dict:
        ids = [int(i) for i in request["ids"]]
        timeout = float(request.get("timeout", 0))
        started = time.monotonic()
        results: dict[int, str] = {}
        elapsed: dict[int, float | None] = {}
        since_connect: dict[int, float | None] = {}
        waiting = selectors.DefaultSelector()
        for ident in ids:
            sock = self.clients.get(ident)
            since_connect[ident] = None
            if sock is None:
                results[ident], elapsed[ident] = "unknown-id", None
            else:
                waiting.register(sock, selectors.EVENT_WRITE, ident)
        while True:
            left = max(0.0, started + timeout - time.monotonic())
            for key, _ in waiting.select(timeout=left):
                code = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                results[key.data] = errno_name(code)
                elapsed[key.data] = round(time.monotonic() - started, 4)
                since_connect[key.data] = round(time.monotonic() - self.connect_started[key.data], 4)
                waiting.unregister(key.fileobj)
            if not waiting.get_map() or time.monotonic() >= started + timeout:
                break
        for key in list(waiting.get_map().values()):
            results[key.data], elapsed[key.data] = "pending", None
        waiting.close()
        return {"results": [results[i] for i in ids], "elapsed": [elapsed[i] for i in ids],
                "since_connect": [since_connect[i] for i in ids]}

    def op_stats(self, request: dict) -> dict:
        sock, stats = self.listeners[int(request["id"])]
        return dict(stats)

    def op_close(self, request: dict) -> dict:
        for ident in request["ids"]:
            sock = self.clients.pop(int(ident), None)
            if sock is not None:
                sock.close()
        return {}

    def shutdown(self) -> None:
        for sock in self.clients.values():
            sock.close()
        self.loop.stop()
        self.loop.join(timeout=2)


def main(role: str, args: list[str]) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    peer = Peer()
    greet(role)
    try:
        serve_lines(peer)
    finally:
        peer.shutdown()
    return 0
