"""The ``streams SPECS_JSON`` role of the traffic peer: long-lived client streams, like kubelet's watches.

Each stream keeps a connection open through the balancer, reconnects (or re-requests) as soon as it
ends, and records when each line arrived and from which upstream, and how each connection ended.
lab.traffic.StreamClient drives it.
"""

from __future__ import annotations

import errno
import json
import os
import selectors
import signal
import socket
import sys
import time
from typing import Sequence

from lab.peer.protocol import greet, respond
from lab.peer.upstream import GOODBYE

class _ClientStream:
    """One stream of the client: reconnects whenever its connection ends."""

    def __init__(self, index: int, kind: str, host: str, port: int, path: str, send_every: float = 0.0) -> None:
        self.index, self.kind, self.host, self.port, self.path = index, kind, host, port, path
        self.send_every = send_every          # L4: write a line toward the upstream this often (0: never)
        self.next_send: float | None = None
        self.sock: socket.socket | None = None
        self.connections: list[dict] = []
        self.buffer = b""
        self.headers_done = False
        self.chunk_left: int | None = None    # HTTP: bytes left in the current chunk (None: read a size)
        self.reconnect_at: float | None = 0.0

    @property
    def current(self) -> dict:
        return self.connections[-1]


def run_client(specs: Sequence[tuple[str, str, int, int, str]]) -> None:
    """The stream client: ``specs`` = (kind "l4"|"l7", host, port, count, path). Requests: ``status``
    (per stream: backend and age of the last line), ``dump`` (everything), ``quit``.

    Each connection is recorded as {"start", "connected", "end", "why", "clean", "data": [[t, upstream],
    ...]}. ``why`` says how it ended: "eof" (the peer's FIN, or for l7 the last chunk of the response),
    an errno name ("ECONNRESET", "ECONNREFUSED", ...), "http-<status>" (l7: not a 200) or "bad-chunk".
    ``clean`` is True only when the upstream itself ended the stream properly: the terminating chunk
    (l7) or its goodbye line ``NAME bye`` (l4) came before the end. Through nginx an upstream socket
    destroyed under nginx, or reset, reaches the client as a plain FIN: "eof" with clean False."""
    selector = selectors.DefaultSelector()
    streams: list[_ClientStream] = []
    for kind, host, port, count, path, *rest in specs:
        for _ in range(count):
            streams.append(_ClientStream(len(streams), kind, host, port, path, float(rest[0]) if rest else 0.0))
    os.set_blocking(sys.stdin.fileno(), False)
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
    command_buffer = b""

    def start(stream: _ClientStream, now: float) -> None:
        stream.reconnect_at = None
        stream.buffer, stream.headers_done, stream.chunk_left = b"", False, None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        stream.connections.append({"start": now, "connected": None, "end": None, "why": None, "clean": False,
                                   "data": []})
        code = sock.connect_ex((stream.host, stream.port))
        stream.sock = sock
        if code not in (0, errno.EINPROGRESS):
            end(stream, now, errno.errorcode.get(code, str(code)))
            return
        selector.register(sock, selectors.EVENT_WRITE, stream)

    def end(stream: _ClientStream, now: float, why: str) -> None:
        if stream.sock is not None:
            try:
                selector.unregister(stream.sock)
            except (KeyError, ValueError):
                pass
            stream.sock.close()
            stream.sock = None
        connection = stream.current
        connection["end"], connection["why"] = now, why
        # Reconnect at once after a stream that flowed (like a watch re-established on EOF); back off
        # a little after one that never got data, so an unreachable nginx is not hammered.
        stream.reconnect_at = now if connection["data"] else now + 0.05
        stream.next_send = None

    def lines_of(stream: _ClientStream, now: float, payload: bytes) -> None:
        for line in payload.split(b"\n"):
            parts = line.split()
            if len(parts) == 2 and parts[1] == GOODBYE.encode():
                stream.current["clean"] = True      # the upstream's last line: it ends this stream
            elif parts:
                stream.current["data"].append([round(now, 6), parts[0].decode("latin-1")])

    def on_data(stream: _ClientStream, now: float, data: bytes) -> str | None:
        """Consumes bytes; returns a reason to end the connection, or None."""
        stream.buffer += data
        if stream.kind == "l7" and not stream.headers_done:
            if b"\r\n\r\n" not in stream.buffer:
                return None
            head, stream.buffer = stream.buffer.split(b"\r\n\r\n", 1)
            status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            if " 200 " not in status_line + " ":
                return "http-" + (status_line.split()[1] if len(status_line.split()) > 1 else "bad")
            stream.headers_done = True
        if stream.kind == "l4":
            complete, _, stream.buffer = stream.buffer.rpartition(b"\n")
            if complete:
                lines_of(stream, now, complete)
            return None
        while True:     # chunked transfer coding
            if stream.chunk_left is None:
                if b"\r\n" not in stream.buffer:
                    return None
                size_line, stream.buffer = stream.buffer.split(b"\r\n", 1)
                try:
                    stream.chunk_left = int(size_line.split(b";")[0], 16)
                except ValueError:
                    return "bad-chunk"
                if stream.chunk_left == 0:
                    stream.current["clean"] = True
                    return "eof"        # the last chunk: the response ended
            if len(stream.buffer) < stream.chunk_left + 2:
                return None
            lines_of(stream, now, stream.buffer[:stream.chunk_left])
            stream.buffer = stream.buffer[stream.chunk_left + 2:]
            stream.chunk_left = None

    class Requests:
        @staticmethod
        def op_status(request: dict) -> dict:
            now = time.monotonic()
            out = []
            for stream in streams:
                last = next((c["data"][-1] for c in reversed(stream.connections) if c["data"]), None)
                out.append({"kind": stream.kind, "backend": last[1] if last else None,
                            "age": round(now - last[0], 4) if last else None,
                            "connections": len(stream.connections)})
            return {"now": now, "streams": out}

        @staticmethod
        def op_dump(request: dict) -> dict:
            return {"now": time.monotonic(),
                    "streams": [{"kind": s.kind, "connections": s.connections} for s in streams]}

    greet("streams")
    while True:
        now = time.monotonic()
        waits = [s.reconnect_at for s in streams if s.reconnect_at is not None]
        waits += [s.next_send for s in streams if s.next_send is not None]
        timeout = max(0.0, min(waits) - now) if waits else 1.0
        for key, events in selector.select(timeout=min(timeout, 1.0)):
            now = time.monotonic()
            if key.data is None:
                try:
                    chunk = os.read(sys.stdin.fileno(), 4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    return
                command_buffer += chunk
                while b"\n" in command_buffer:
                    line, command_buffer = command_buffer.split(b"\n", 1)
                    if not respond(Requests, line):
                        return
                continue
            stream: _ClientStream = key.data
            if stream.sock is None:
                continue
            if events & selectors.EVENT_WRITE and stream.current["connected"] is None:
                code = stream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    end(stream, now, errno.errorcode.get(code, str(code)))
                    continue
                stream.current["connected"] = now
                if stream.send_every > 0:
                    # Spread over the interval, so some stream always has data in flight.
                    stream.next_send = now + stream.send_every * ((stream.index * 0.618) % 1.0)
                if stream.kind == "l7":
                    request = f"GET {stream.path} HTTP/1.1\r\nHost: apiserver\r\nUser-Agent: incident-lab\r\n\r\n"
                    try:
                        stream.sock.send(request.encode())
                    except OSError as error:
                        end(stream, now, errno.errorcode.get(error.errno, str(error.errno)))
                        continue
                selector.modify(stream.sock, selectors.EVENT_READ, stream)
                continue
            try:
                data = stream.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as error:
                end(stream, now, errno.errorcode.get(error.errno, str(error.errno)))
                continue
            if not data:
                end(stream, now, "eof")
                continue
            reason = on_data(stream, now, data)
            if reason:
                end(stream, now, reason)
        now = time.monotonic()
        for stream in streams:
            if stream.reconnect_at is not None and stream.reconnect_at <= now:
                start(stream, now)
            elif stream.next_send is not None and stream.next_send <= now and stream.sock is not None:
                stream.next_send = max(stream.next_send + stream.send_every, now)
                try:
                    stream.sock.send(b"ping\n")
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as error:
                    end(stream, now, errno.errorcode.get(error.errno, str(error.errno)))


def main(role: str, args: list[str]) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_client([tuple(spec) for spec in json.loads(args[0])])
    return 0
