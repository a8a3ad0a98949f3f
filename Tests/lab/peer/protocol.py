"""The one protocol every role of the traffic peer speaks: JSON lines on stdin and stdout.

- The first line a peer prints: ``{"ok": true, "ready": ROLE, "pid": N, ...}`` (a role may add facts,
  such as how many sockets it can hold).
- A request is one line ``{"op": NAME, ...fields}``; its answer one line ``{"ok": true, ...}`` or
  ``{"ok": false, "error": "...", "errno": NAME}`` (``errno`` when an OSError failed it).
- ``{"op": "quit"}`` (or the end of stdin) ends the peer; it answers ``{"ok": true}`` first.
- A role that reports as it goes prints events between answers: ``{"event": NAME, "t": T, ...}``, T
  being CLOCK_MONOTONIC, which every process of the machine shares with the test.

Standard library only: a peer runs under whatever python3 runs the tests.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time

_write_lock = threading.Lock()


def errno_name(number: int | None) -> str:
    if not number:
        return "0"
    return errno.errorcode.get(number, str(number))


def send(payload: dict) -> None:
    line = json.dumps(payload) + "\n"
    with _write_lock:
        sys.stdout.write(line)
        sys.stdout.flush()


def greet(role: str, /, **facts) -> None:
    send({"ok": True, "ready": role, "pid": os.getpid(), **facts})


def event(name: str, /, **fields) -> None:
    send({"event": name, "t": time.monotonic(), **fields})


QUIT = object()


def dispatch(handler, line: str | bytes):
    """The answer to one request line, from ``handler.op_<name>(request)``; QUIT for ``quit``; None
    for a blank line. A failing request is answered, never fatal: the test decides what it means."""
    line = line.strip()
    if not line:
        return None
    try:
        request = json.loads(line)
        op = request.pop("op", None)
        if op == "quit":
            return QUIT
        method = getattr(handler, f"op_{op}", None)
        if method is None:
            return {"ok": False, "error": f"unknown op {op!r}"}
        return {"ok": True, **(method(request) or {})}
    except OSError as error:
        return {"ok": False, "error": f"{errno_name(error.errno)}: {error}", "errno": errno_name(error.errno)}
    except Exception as error:  # reported to the test, which decides
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}


def respond(handler, line: str | bytes) -> bool:
    """Answers one request line; False once it was ``quit`` (answered too), when the peer should end."""
    answer = dispatch(handler, line)
    if answer is QUIT:
        send({"ok": True})
        return False
    if answer is not None:
        send(answer)
    return True


def serve_lines(handler=None) -> None:
    """Answers requests from stdin, one at a time, until ``quit`` or the end of stdin. Without a
    handler every request but ``quit`` is answered as unknown."""
    handler = handler if handler is not None else object()
    for line in sys.stdin:
        if not respond(handler, line):
            return


class LineReader:
    """Whole lines from a non-blocking descriptor, for roles that wait on their own event loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.closed = False
        os.set_blocking(fd, False)

    def has_line(self) -> bool:
        return b"\n" in self.buffer

    def fill(self) -> None:
        """Reads what is there; marks the reader closed at the end of input."""
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.closed = True
        self.buffer += chunk

    def lines(self) -> list[bytes]:
        *complete, self.buffer = self.buffer.split(b"\n")
        return complete
