"""The ``upstream NAME [SHUTDOWN_DELAY]`` role of the traffic peer: an apiserver-like upstream.

It streams ``NAME SEQ`` lines on TCP :6443 and as chunked HTTP on :8080 (``GET /stream``), answers
``/healthz`` and ``/readyz``, and misbehaves the ways a live apiserver does when signalled (see
``serve_upstream``). lab.incident starts one per upstream namespace.
"""

from __future__ import annotations

import selectors
import signal
import socket
import time

from lab.peer.protocol import event, greet

TCP_PORT, HTTP_PORT = 6443, 8080
LINE_INTERVAL = 0.05                    # a line this often to each stream
OVERLOAD_DELAY = 2.0                    # an overloaded upstream answers /readyz and /healthz this late
GOODBYE = "bye"                         # an upstream's last line on a TCP stream it ends cleanly


def serve_upstream(name: str, tcp_port: int, http_port: int, interval: float, shutdown_delay: float = 3.0) -> None:
    """The upstream server: streams ``NAME SEQ`` lines on TCP and as chunked HTTP; one thread.

    ``GET /healthz`` and ``GET /readyz`` answer 200 ``ok``, on a kept-alive connection when an HTTP/1.1
    client does not ask to close (the agent's ``probe.reuse``). Signals change its behaviour; each change is
    announced on stdout as an event (protocol.py):

    - SIGTERM: kube-apiserver's graceful shutdown (``draining``). For ``shutdown_delay`` seconds /readyz
      answers 503 while every stream keeps flowing and new connections are accepted and served; then
      ``ending_streams``: the listeners close (what waits in their accept queue is taken first, so
      nothing gets an RST) and every stream ends cleanly (HTTP: the terminating chunk; TCP: a last line
      ``NAME bye``), both with a FIN; once the peers closed too (at most 1 s), ``exiting``, exit 0.
    - SIGUSR1 toggles overload (``overloaded`` / ``overload_over``): /readyz and /healthz answer only
      after OVERLOAD_DELAY seconds (a probe connects, then times out), streams keep flowing.
    - SIGUSR2 toggles wedged (``wedged`` / ``unwedged``): connections are still accepted but nothing is
      read, written or closed any more: streams stall, requests get no answer. Back from it, everything
      carries on (held requests are answered, held TCP connections start streaming).
    """
    selector = selectors.DefaultSelector()
    listeners: list[socket.socket] = []
    for port, kind in ((tcp_port, "tcp-listen"), (http_port, "http-listen")):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(1024)
        listener.setblocking(False)
        selector.register(listener, selectors.EVENT_READ, {"kind": kind})
        listeners.append(listener)
    # Signals: the C-level handler writes the signal number to the wakeup socket, which wakes select().
    wakeup_read, wakeup_write = socket.socketpair()
    for end in (wakeup_read, wakeup_write):
        end.setblocking(False)
    selector.register(wakeup_read, selectors.EVENT_READ, {"kind": "wakeup"})
    for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, lambda *_: None)
    signal.set_wakeup_fd(wakeup_write.fileno(), warn_on_full_buffer=False)

    connections: dict[socket.socket, dict] = {}   # every accepted connection still open, with its state
    sequence = 0
    overloaded = wedged = False
    ending_at: float | None = None                # set by SIGTERM: when the streams end

    greet("upstream", name=name)

    def close(conn: socket.socket) -> None:
        connections.pop(conn, None)
        try:
            selector.unregister(conn)
        except (KeyError, ValueError):
            pass
        conn.close()

    def read_available(conn: socket.socket) -> bytes:
        data = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return data
            if not chunk:
                return data
            data += chunk

    def request_path(state: dict) -> str:
        request_line = state["buffer"].split(b"\r\n", 1)[0].decode("latin-1").split()
        return request_line[1] if len(request_line) > 1 else "/"

    def drain(conn: socket.socket) -> bool:
        """Reads what the peer sent (so a close sends a FIN, not an RST); True once it sent its FIN."""
        while True:
            try:
                if not conn.recv(65536):
                    return True
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return True

    def finish(conn: socket.socket, payload: bytes = b"") -> None:
        """Sends ``payload`` and a FIN; the socket is closed once the peer's FIN comes (or at exit)."""
        state = connections.get(conn)
        try:
            if payload:
                conn.send(payload, socket.MSG_DONTWAIT)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            close(conn)
            return
        if state is None:
            return
        state["kind"] = "closing"
        if drain(conn):
            close(conn)

    def send_line(conn: socket.socket, state: dict) -> None:
        line = f"{name} {sequence}\n"
        payload = f"{len(line):x}\r\n{line}\r\n" if state["kind"] == "http-stream" else line
        try:
            conn.send(payload.encode(), socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            pass        # send buffer full (e.g. our link is down): skip this line
        except OSError:
            close(conn)

    def respond(conn: socket.socket, state: dict) -> None:
        """Answers a complete request of ``state["path"]``."""
        path = state["path"]
        if path.startswith("/stream"):
            head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                    b"Cache-Control: no-cache\r\n\r\n")
            if ending_at is not None and time.monotonic() >= ending_at:
                finish(conn, head + b"0\r\n\r\n")      # the streams are ending: an empty, complete one
                return
            try:
                conn.send(head)
            except OSError:
                close(conn)
                return
            state["kind"] = "http-stream"
            send_line(conn, state)
            return
        if path.startswith("/readyz") and ending_at is not None:
            status, body = "503 Service Unavailable", b"shutting down\n"
        elif path.startswith(("/healthz", "/readyz")):
            status, body = "200 OK", b"ok\n"
        else:
            status, body = "404 Not Found", b"no\n"
        head = state["buffer"].split(b"\r\n\r\n", 1)[0].lower()
        if head.split(b"\r\n", 1)[0].endswith(b"http/1.1") and b"connection: close" not in head:
            # A keep-alive client (the agent's `probe.reuse`): answer and wait for its next request.
            try:
                conn.send(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body, socket.MSG_DONTWAIT)
            except OSError:
                close(conn)
                return
            state["kind"], state["buffer"] = "http-request", b""
            return
        finish(conn, f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)

    def on_request(conn: socket.socket, state: dict) -> None:
        state["path"] = request_path(state)
        if overloaded and state["path"].startswith(("/healthz", "/readyz")):
            state["kind"], state["due"] = "http-delayed", time.monotonic() + OVERLOAD_DELAY
            return
        respond(conn, state)

    def accept(listener: socket.socket, kind: str) -> None:
        for _ in range(64):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError, OSError):
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            state = {"kind": "tcp-stream"} if kind == "tcp-listen" else {"kind": "http-request", "buffer": b""}
            connections[conn] = state
            if wedged:
                continue                    # held: neither read nor written until unwedged
            selector.register(conn, selectors.EVENT_READ, state)
            if state["kind"] == "tcp-stream":
                send_line(conn, state)      # the first line at once, then every interval

    def on_readable(conn: socket.socket, state: dict) -> None:
        try:
            data = conn.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            close(conn)
            return
        if not data:
            close(conn)
            return
        if state["kind"] != "http-request":
            return                          # a stream client has nothing to say: ignore
        state["buffer"] += data
        if b"\r\n\r\n" in state["buffer"]:
            on_request(conn, state)

    def set_wedged(on: bool) -> None:
        nonlocal wedged
        wedged = on
        for conn, state in list(connections.items()):
            if on:
                try:
                    selector.unregister(conn)
                except (KeyError, ValueError):
                    pass
            else:
                selector.register(conn, selectors.EVENT_READ, state)
        event("wedged" if on else "unwedged")

    def end_streams() -> None:
        """The end of the graceful shutdown: every connection ends cleanly, then the process exits."""
        event("ending_streams")
        for listener, kind in zip(listeners, ("tcp-listen", "http-listen")):
            accept(listener, kind)          # take what waits in the accept queue: closing it would reset it
            selector.unregister(listener)
            listener.close()
        for conn, state in list(connections.items()):
            if conn not in connections:
                continue
            if state["kind"] == "tcp-stream":
                finish(conn, f"{name} {GOODBYE}\n".encode())
            elif state["kind"] == "http-stream":
                finish(conn, b"0\r\n\r\n")
            elif state["kind"] == "http-delayed":
                respond(conn, state)
            elif state["kind"] == "http-request":
                state["buffer"] += read_available(conn)
                if b"\r\n\r\n" in state["buffer"]:
                    state["path"] = request_path(state)
                    respond(conn, state)    # at once, even when overloaded: /stream gets an empty one
                else:
                    finish(conn)            # no request yet: an idle connection just ends
        deadline = time.monotonic() + 1.0
        while connections and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                conn = key.fileobj
                if conn in connections and drain(conn):
                    close(conn)
        for conn in list(connections):
            drain(conn)
            close(conn)
        event("exiting")

    next_tick = time.monotonic() + interval
    while True:
        now = time.monotonic()
        deadlines = []
        if not wedged:
            deadlines.append(next_tick)
            deadlines += [s["due"] for s in connections.values() if s["kind"] == "http-delayed"]
            if ending_at is not None:
                deadlines.append(ending_at)
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        for key, _ in selector.select(timeout=timeout):
            state = key.data
            if state["kind"] == "wakeup":
                try:
                    signums = wakeup_read.recv(64)
                except (BlockingIOError, InterruptedError):
                    continue
                for signum in signums:
                    if signum == signal.SIGTERM and ending_at is None:
                        ending_at = time.monotonic() + shutdown_delay
                        event("draining")
                    elif signum == signal.SIGUSR1:
                        overloaded = not overloaded
                        event("overloaded" if overloaded else "overload_over")
                    elif signum == signal.SIGUSR2:
                        set_wedged(not wedged)
                continue
            if wedged:
                if state["kind"] in ("tcp-listen", "http-listen"):
                    accept(key.fileobj, state["kind"])
                continue
            if state["kind"] in ("tcp-listen", "http-listen"):
                accept(key.fileobj, state["kind"])
            elif state["kind"] == "closing":
                if drain(key.fileobj):
                    close(key.fileobj)
            elif key.fileobj in connections:
                on_readable(key.fileobj, state)
        if wedged:
            continue
        now = time.monotonic()
        if ending_at is not None and now >= ending_at:
            end_streams()
            return
        for conn, state in list(connections.items()):
            if state["kind"] == "http-delayed" and state["due"] <= now and conn in connections:
                respond(conn, state)
        if now >= next_tick:
            sequence += 1
            for conn, state in list(connections.items()):
                if state["kind"] in ("tcp-stream", "http-stream") and conn in connections:
                    send_line(conn, state)
            next_tick = max(next_tick + interval, now + interval / 2)


def main(role: str, args: list[str]) -> int:
    name = args[0]
    shutdown_delay = float(args[1]) if len(args) > 1 else 3.0
    serve_upstream(name, TCP_PORT, HTTP_PORT, LINE_INTERVAL, shutdown_delay)   # SIGTERM: a graceful exit
    return 0
