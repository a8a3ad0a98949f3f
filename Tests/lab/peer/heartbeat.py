"""The ``heartbeat HOST PORT`` role of the traffic peer: a client like kubelet on a reused connection.

It holds three connections to an echo server: ``heartbeat`` sends a beat every 0.5 s and waits for
the echo (up to 60 s, the way a client with a long timeout hangs); ``busy`` exchanges 100 bytes all
the time; ``idle`` does nothing. When the heartbeat connection fails it reconnects at once, as
kubelet would if only the kernel told it. Events: ``connected`` (its three local ports), ``echo``,
``failed`` (``error``), ``reconnected`` (``port``), ``busy-failed``.
"""

from __future__ import annotations

import errno
import socket
import threading
import time

from lab.peer.protocol import errno_name, event, greet, serve_lines


def beat(host: str, port: int) -> None:
    def connect() -> socket.socket:
        s = socket.create_connection((host, port))
        s.settimeout(0.5)
        return s

    idle, busy, heartbeat = connect(), connect(), connect()
    event("connected", port=heartbeat.getsockname()[1], idle=idle.getsockname()[1], busy=busy.getsockname()[1])
    while True:
        try:
            busy.sendall(b"b" * 100)
            busy.recv(100)
        except OSError as error:
            event("busy-failed", error=errno_name(error.errno))
        try:
            heartbeat.sendall(b"hb\n")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if heartbeat.recv(16):
                        event("echo", port=heartbeat.getsockname()[1])
                        break
                    raise ConnectionResetError(errno.ECONNRESET, "eof")
                except socket.timeout:
                    busy.sendall(b"b" * 100)
                    busy.recv(100)
        except OSError as error:
            event("failed", error=errno_name(error.errno))
            heartbeat.close()
            heartbeat = connect()
            event("reconnected", port=heartbeat.getsockname()[1])
        time.sleep(0.5)


def main(role: str, args: list[str]) -> int:
    host, port = args[0], int(args[1])
    greet(role)
    threading.Thread(target=beat, args=(host, port), daemon=True).start()
    serve_lines()  # only quit: the events are the output
    return 0
