"""incident_lab: the seed incident as a lab: real nginx between streaming clients and three upstreams.

    client ns "cli"              nginx ns "ngx"                               upstream ns "up1".."up3"
    to-ngx 10.233.0.2 <veth> to-cli 10.233.0.1                               
                                 (nginx listens :6443 stream, :8080 http;
                                  conn-reaper runs here, /metrics on
                                  127.0.0.1:9747)
                                 to-upN 10.233.N.1/24 <veth> to-ngx 10.233.N.2/24 (upstream server)

nginx is configured like the L4 balancer kubespray puts on every node (``stream``, ``least_conn``,
``proxy_timeout 10m``, ``proxy_connect_timeout 1s``) and like the L7 proxy of incident 1 (``least_conn``,
``proxy_read_timeout 30m``, ``proxy_next_upstream error timeout``, ``proxy_buffering off``). Each upstream
runs this file as ``upstream NAME``: on TCP :6443 it writes ``NAME SEQ\\n`` every 50 ms to every
connection, on HTTP :8080 ``GET /stream`` gets the same lines as an endless chunked response and
``GET /healthz`` a 200. The client runs this file as ``client``: it keeps N streams open through nginx,
reconnects (or re-requests) as soon as one ends, like kubelet's watches do, and records when each line
arrived and from which upstream, and how each connection ended (``clean``: the upstream ended it
itself). "Cutting" an upstream sets its own veth end down: it can send nothing, no FIN, no RST, as in
incident 1.

An upstream can also misbehave the ways a live apiserver does (see ``serve_upstream``), each driven by
a signal and announced on its stdout as ``{EVENT: time.monotonic()}``: a graceful shutdown like
kube-apiserver's (``terminate_gracefully``: /readyz 503 for ``shutdown_delay`` seconds while every
stream flows, then it ends its streams cleanly and exits 0), overload (``set_overloaded``: /readyz and
/healthz answer after 2 s, streams flow), wedged (``set_wedged``: connections accepted, nothing
answered or closed); ``drop_new_connections`` makes its namespace drop incoming SYNs.

Everything lives in namespaces of a netlab.Lab; nginx runs as a child (``daemon off``) with its pid
file, logs and temp paths in a private temp dir. ``IncidentLab.close()`` stops what it started and
removes the dir; ``Lab.close()`` then deletes the namespaces and kills whatever is left in them.

Timestamps are CLOCK_MONOTONIC (``time.monotonic()``), which every process of the machine shares, so
client arrival times, the cut and agent log lines are directly comparable.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import errno
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import netlab  # noqa: E402

NGINX_ADDR, CLIENT_ADDR = "10.233.0.1", "10.233.0.2"
L4_PORT, L7_PORT = 6443, 8080          # nginx listens on these, the upstreams too
UPSTREAM_NAMES = ("up1", "up2", "up3")
LINE_INTERVAL = 0.05                    # an upstream writes a line this often to each stream
AGENT_LISTEN = ("127.0.0.1", 9747)      # inside the nginx namespace
NGINX_STREAM_UPSTREAM, NGINX_HTTP_UPSTREAM = "kube_apiserver", "kube_apiserver_http"
NGINX_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def upstream_address(index: int) -> str:
    """Address of upstream ``index`` (1-based)."""
    return f"10.233.{index}.2"


# =============================================================================================
# Processes that run inside the namespaces (python3 incident_lab.py upstream|client ...)


OVERLOAD_DELAY = 2.0                    # an overloaded upstream answers /readyz and /healthz this late
GOODBYE = "bye"                         # an upstream's last line on a TCP stream it ends cleanly


def serve_upstream(name: str, tcp_port: int, http_port: int, interval: float, shutdown_delay: float = 3.0) -> None:
    """The upstream server: streams ``NAME SEQ`` lines on TCP and as chunked HTTP; one thread.

    ``GET /healthz`` and ``GET /readyz`` answer 200 ``ok``. Signals change its behaviour; each change is
    announced on stdout as one JSON line ``{EVENT: time.monotonic()}``:

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

    def event(key: str) -> None:
        print(json.dumps({key: time.monotonic()}), flush=True)

    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)

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


class _ClientStream:
    """One stream of the client: reconnects whenever its connection ends."""

    def __init__(self, index: int, kind: str, host: str, port: int, path: str) -> None:
        self.index, self.kind, self.host, self.port, self.path = index, kind, host, port, path
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
    """The stream client: ``specs`` = (kind "l4"|"l7", host, port, count, path). Commands on stdin,
    one per line: ``status`` (per stream: backend and age of the last line), ``dump`` (everything),
    ``quit``. Answers are one JSON line each.

    Each connection is recorded as {"start", "connected", "end", "why", "clean", "data": [[t, upstream],
    ...]}. ``why`` says how it ended: "eof" (the peer's FIN, or for l7 the last chunk of the response),
    an errno name ("ECONNRESET", "ECONNREFUSED", ...), "http-<status>" (l7: not a 200) or "bad-chunk".
    ``clean`` is True only when the upstream itself ended the stream properly: the terminating chunk
    (l7) or its goodbye line ``NAME bye`` (l4) came before the end. Through nginx an upstream socket
    destroyed under nginx, or reset, reaches the client as a plain FIN: "eof" with clean False."""
    selector = selectors.DefaultSelector()
    streams: list[_ClientStream] = []
    for kind, host, port, count, path in specs:
        for _ in range(count):
            streams.append(_ClientStream(len(streams), kind, host, port, path))
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

    def answer(command: str) -> None:
        now = time.monotonic()
        if command == "status":
            out = []
            for stream in streams:
                last = next((c["data"][-1] for c in reversed(stream.connections) if c["data"]), None)
                out.append({"kind": stream.kind, "backend": last[1] if last else None,
                            "age": round(now - last[0], 4) if last else None,
                            "connections": len(stream.connections)})
            document = {"now": now, "streams": out}
        elif command == "dump":
            document = {"now": now, "streams": [{"kind": s.kind, "connections": s.connections} for s in streams]}
        else:
            document = {"error": f"unknown command {command!r}"}
        sys.stdout.write(json.dumps(document) + "\n")
        sys.stdout.flush()

    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    while True:
        now = time.monotonic()
        waits = [s.reconnect_at for s in streams if s.reconnect_at is not None]
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
                    command = line.decode().strip()
                    if command == "quit":
                        return
                    if command:
                        answer(command)
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


# =============================================================================================
# Network namespace helpers for the test process (a thread enters the namespace, not the process)

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(namespace: str, function: Callable, *args, **kwargs):
    """Runs ``function`` on a fresh thread that has entered network namespace ``namespace`` (setns
    changes only the calling thread), and returns its result or raises its exception."""
    outcome: dict = {}

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"setns({namespace}): {os.strerror(code)}")
            finally:
                os.close(fd)
            outcome["value"] = function(*args, **kwargs)
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=body, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, str]:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    if any(line.lower().startswith("transfer-encoding:") and "chunked" in line.lower() for line in lines[1:]):
        decoded = b""
        while body:
            size_line, _, body = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            decoded, body = decoded + body[:size], body[size + 2:]
        body = decoded
    return status, body.decode()


def http_get(namespace: str, host: str, port: int, path: str, timeout: float = 3.0) -> tuple[int, str]:
    """GET http://host:port/path from inside a namespace: (status, body)."""
    return in_netns(namespace, _http_get, host, port, path, timeout)


def _can_connect(host: str, port: int, timeout: float) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Polls until ``condition()`` is truthy and returns it; AssertionError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# Agent output: netlab's logfmt and Prometheus parsers (re-exported for the tests that import them here)
parse_logfmt, Metrics = netlab.parse_logfmt, netlab.Metrics


@dataclasses.dataclass
class LogLine:
    t: float           # time.monotonic() when the line was read
    text: str
    fields: dict

    @property
    def msg(self) -> str:
        return self.fields.get("msg", "")

    @property
    def logged_at(self) -> float:
        """The agent's own timestamp (``time=``, ms resolution) as Unix seconds."""
        return datetime.datetime.fromisoformat(self.fields["time"]).timestamp()

    @property
    def reap_started_at(self) -> float:
        """For a reap line: when the reap began (its timestamp less ``duration_ms``)."""
        return self.logged_at - float(self.fields.get("duration_ms", "0")) / 1000


class Agent:
    """``conn-reaper run ...`` inside a namespace, its stderr collected line by line with arrival times."""

    def __init__(self, namespace, binary: str, args: Sequence[str], listen: tuple[str, int] = AGENT_LISTEN) -> None:
        self.namespace = namespace
        self.listen = listen
        self.argv = [binary, "run", *map(str, args)]
        self.started = time.monotonic()
        self.process = namespace.popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
        self.lines: list[LogLine] = []
        self.stdout = ""
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="agent-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in iter(self.process.stderr.readline, b""):
            text = raw.decode(errors="replace").rstrip("\n")
            with self._lock:
                self.lines.append(LogLine(time.monotonic(), text, parse_logfmt(text)))

    # -- logs ------------------------------------------------------------------------------

    def log(self) -> list[LogLine]:
        with self._lock:
            return list(self.lines)

    def log_text(self, last: int = 60) -> str:
        return "\n".join(line.text for line in self.log()[-last:])

    def find(self, msg: str | None = None, since: float = 0.0, **fields: str) -> list[LogLine]:
        """Log lines (read after ``since``) with this msg and these field values."""
        return [line for line in self.log() if line.t >= since and (msg is None or line.msg == msg)
                and all(line.fields.get(k) == v for k, v in fields.items())]

    def reaps(self, backend: str | None = None, since: float = 0.0) -> list[LogLine]:
        """``msg=reaped`` lines, for one backend (``IP:PORT``) or all."""
        return self.find("reaped", since, **({"backend": backend} if backend else {}))

    # -- endpoints -------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 3.0) -> tuple[int, str]:
        return http_get(self.namespace.name, self.listen[0], self.listen[1], path, timeout)

    def metrics(self) -> Metrics:
        status, body = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}: {body}"
        return Metrics(body)

    def status(self) -> dict:
        code, body = self.get("/status")
        assert code == 200, f"/status answered {code}: {body}"
        return json.loads(body)

    def backend_states(self) -> dict[str, str]:
        """``{"pool/IP:PORT": state}`` from /status."""
        return {f"{pool['name']}/{backend['address']}": backend["state"]
                for pool in self.status()["pools"] for backend in pool["backends"]}

    def wait_listening(self, timeout: float = 15.0) -> None:
        def listening() -> bool:
            self.check_running()
            return in_netns(self.namespace.name, _can_connect, self.listen[0], self.listen[1], 0.5)
        wait_for(listening, timeout, f"conn-reaper to listen on {self.listen}")

    def wait_ready(self, timeout: float = 15.0) -> None:
        self.wait_listening(timeout)
        wait_for(lambda: self.get("/readyz")[0] == 200, timeout, "/readyz to answer 200")

    def wait_states(self, expected: dict[str, str], timeout: float = 10.0) -> dict[str, str]:
        """Waits until /status shows these states (keys as in backend_states())."""
        def matches():
            states = self.backend_states()
            return states if all(states.get(k) == v for k, v in expected.items()) else None
        try:
            return wait_for(matches, timeout, f"backend states {expected}", interval=0.05)
        except AssertionError as error:
            raise AssertionError(f"{error}; now {self.backend_states()}\n{self.log_text()}") from None

    # -- lifecycle -------------------------------------------------------------------------

    def running(self) -> bool:
        return self.process.poll() is None

    def check_running(self) -> None:
        if not self.running():
            self._reader.join(timeout=2)
            raise AssertionError(f"conn-reaper exited with {self.process.returncode}:\n{self.log_text()}")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 5.0) -> int:
        """SIGTERM (graceful shutdown), then SIGKILL after ``timeout``; returns the exit status."""
        stdout, self.process.stdout = self.process.stdout, None   # read below, after the exit
        netlab.stop_child(self.process, grace=timeout)
        self._reader.join(timeout=2)
        if stdout:
            self.stdout = stdout.read().decode(errors="replace")
            stdout.close()
        return self.process.returncode


def pool_yaml(pools: Sequence[dict], listen: tuple[str, int] = AGENT_LISTEN, **top) -> str:
    """The agent's YAML for ``pools`` (dicts: name, backends, probe dict, and any other pool key such as
    ``reap_on`` or ``drain_timeout``: a string is written as is, anything else as JSON). Hand-written: no
    yaml module is needed on the machine."""
    lines = [f"listen: {listen[0]}:{listen[1]}"]
    for key, value in top.items():
        lines.append(f"{key}: {json.dumps(value)}")
    lines.append("pools:")
    for pool in pools:
        lines.append(f"  - name: {pool['name']}")
        lines.append(f"    backends: {json.dumps(list(pool['backends']))}")
        if "protocols" in pool:
            lines.append(f"    protocols: {json.dumps(list(pool['protocols']))}")
        for key, value in pool.items():
            if key not in ("name", "backends", "protocols", "probe"):
                lines.append(f"    {key}: {value if isinstance(value, str) else json.dumps(value)}")
        probe = pool.get("probe", {})
        if probe:
            lines.append("    probe: {" + ", ".join(f"{k}: {json.dumps(v) if not isinstance(v, str) else v}"
                                                     for k, v in probe.items()) + "}")
    return "\n".join(lines) + "\n"


# =============================================================================================
# Stream log analysis


@dataclasses.dataclass
class Stream:
    index: int
    kind: str                  # "l4" | "l7"
    connections: list[dict]    # {"start","connected","end","why","data": [[t, backend], ...]}

    def arrivals(self) -> list[tuple[float, str]]:
        return [(t, b) for c in self.connections for t, b in c["data"]]

    def backend_at(self, t: float) -> str | None:
        """The upstream that sent the last line received at or before ``t``."""
        last = None
        for when, backend in self.arrivals():
            if when > t:
                break
            last = backend
        return last

    def first_after(self, t: float, exclude: str | None = None) -> float | None:
        return next((when for when, backend in self.arrivals() if when > t and backend != exclude), None)

    def lines_between(self, start: float, end: float, backend: str | None = None) -> int:
        return sum(1 for when, b in self.arrivals() if start < when <= end and (backend is None or b == backend))

    def connections_to(self, upstream: str) -> list[dict]:
        """Connections that got lines from ``upstream`` (through nginx a client connection has one
        upstream connection, an l7 one one request); see run_client for their fields."""
        return [c for c in self.connections if any(b == upstream for _, b in c["data"])]

    def connections_started_between(self, start: float, end: float) -> list[dict]:
        return [c for c in self.connections if start < c["start"] <= end]

    def ended_between(self, start: float, end: float) -> list[dict]:
        return [c for c in self.connections if c["end"] is not None and start < c["end"] <= end]

    def longest_gap(self, start: float, end: float) -> float:
        times = [start] + [t for t, _ in self.arrivals() if start < t <= end] + [end]
        return max(b - a for a, b in zip(times, times[1:]))


@dataclasses.dataclass
class StreamDump:
    now: float
    streams: list[Stream]

    @classmethod
    def parse(cls, document: dict) -> "StreamDump":
        return cls(document["now"], [Stream(i, s["kind"], s["connections"]) for i, s in enumerate(document["streams"])])

    def of_kind(self, kind: str) -> list[Stream]:
        return [s for s in self.streams if s.kind == kind]


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclasses.dataclass
class CaseResult:
    """One kind of stream (l4 or l7) through one incident run."""
    kind: str
    streams: list[Stream]
    on_dead: list[Stream]          # streams whose upstream at the cut was the dead one
    recovery: dict[int, float | None]   # stream index -> seconds from the cut to its first line from a live upstream

    @property
    def stalled_recoveries(self) -> list[float | None]:
        return [self.recovery[s.index] for s in self.on_dead]

    def summary(self) -> dict:
        values = [v for v in self.stalled_recoveries if v is not None]
        return {"kind": self.kind, "streams": len(self.streams), "on_dead": len(self.on_dead),
                "recovered": len(values),
                "p50": round(percentile(values, 0.5), 4) if values else None,
                "max": round(max(values), 4) if values else None,
                "all": sorted(round(v, 4) for v in values)}


@dataclasses.dataclass
class IncidentRun:
    """What happened around one cut: stream logs, the cut time, the agent's reap times."""
    dead: str                      # upstream name, e.g. "up2"
    t_cut: float                   # time.monotonic() just before the link went down
    t_cut_done: float              # ... and when `ip link set down` had returned
    t_end: float
    dump: StreamDump
    distribution: dict             # {kind: {backend: streams}} at the cut
    reap_times: list[float]        # monotonic arrival times of the agent's reap lines for the dead upstream
    agent: bool
    reaps: list = dataclasses.field(default_factory=list)   # those lines (LogLine)

    def case(self, kind: str) -> CaseResult:
        streams = self.dump.of_kind(kind)
        on_dead = [s for s in streams if s.backend_at(self.t_cut) == self.dead]
        recovery = {}
        for stream in streams:
            first = stream.first_after(self.t_cut, exclude=self.dead)
            recovery[stream.index] = None if first is None else first - self.t_cut
        return CaseResult(kind, streams, on_dead, recovery)

    def stalled_at(self, t: float, kind: str | None = None, window: float = 0.3) -> list[Stream]:
        """Streams without a line in the ``window`` seconds before ``t``."""
        return [s for s in self.dump.streams if (kind is None or s.kind == kind)
                and s.lines_between(t - window, t) == 0]

    def per_backend_series(self, step: float = 0.05, window: float = 0.15,
                           start: float | None = None) -> tuple[list[float], dict[str, list[int]]]:
        """Streams flowing from each upstream over time (a stream counts for an upstream at t when it got
        a line from it in the ``window`` before t; else it counts as "stalled")."""
        start = self.t_cut - 2.0 if start is None else start
        times, series = [], {name: [] for name in (*UPSTREAM_NAMES, "stalled")}
        arrivals = [s.arrivals() for s in self.dump.streams]
        t = start
        while t <= self.t_end:
            counts = dict.fromkeys(series, 0)
            for stream_arrivals in arrivals:
                recent = [b for when, b in stream_arrivals if t - window < when <= t]
                counts[recent[-1] if recent else "stalled"] += 1
            for name in series:
                series[name].append(counts[name])
            times.append(t - self.t_cut)
            t += step
        return times, series


# =============================================================================================
# The lab


NGINX_CONF = """\
# The seed incident's nginx: kubespray's L4 apiserver balancer and incident 1's L7 proxy.
load_module {module};
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{
    multi_accept on;
    use epoll;
    worker_connections 4096;
}}

stream {{
    upstream {stream_upstream} {{
        least_conn;
{stream_servers}
    }}

    server {{
        listen {nginx}:{l4};
        proxy_pass {stream_upstream};
        proxy_timeout 10m;
        proxy_connect_timeout 1s;
    }}
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream {http_upstream} {{
        least_conn;
{http_servers}
    }}

    server {{
        listen {nginx}:{l7};
        location / {{
            proxy_pass http://{http_upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 30m;
            proxy_connect_timeout 1s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


class StreamClient:
    """The client process (``run_client``) in the client namespace."""

    def __init__(self, namespace, specs: Sequence[tuple[str, str, int, int, str]]) -> None:
        argv = [sys.executable, "-u", str(Path(__file__).resolve()), "client", json.dumps(list(specs))]
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = namespace.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        self._buffer = b""
        ready = self._read(10)
        assert ready.get("ready"), ready

    def _read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None:
                self.stderr.seek(0)
                raise AssertionError(f"stream client did not answer (exit {self.process.poll()}): "
                                     f"{self.stderr.read()[-3000:]}")
            import select
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    continue
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def command(self, command: str, timeout: float = 20) -> dict:
        self.process.stdin.write((command + "\n").encode())
        self.process.stdin.flush()
        return self._read(timeout)

    def status(self) -> dict:
        return self.command("status")

    def dump(self) -> StreamDump:
        return StreamDump.parse(self.command("dump"))

    def stop(self) -> None:
        netlab.stop_child(self.process, quit_line=b"quit\n")
        self.stderr.close()


class IncidentLab:
    """Client, nginx and three upstream namespaces of one netlab.Lab; see the module docstring."""

    DIR_STEM = "crt-incident-"

    def __init__(self, lab, workers: int = 2, shutdown_delay: float = 3.0) -> None:
        self.lab = lab
        self.workers = workers
        self.shutdown_delay = shutdown_delay
        self._remove_stale_dirs()
        self.dir = tempfile.mkdtemp(prefix=f"{self.DIR_STEM}{os.getpid()}-")
        os.chmod(self.dir, 0o755)      # nginx workers (nobody) may need to reach their temp paths
        self.client_ns = None
        self.nginx_ns = None
        self.upstream_ns: dict[str, object] = {}
        self.upstream_procs: dict[str, subprocess.Popen] = {}
        self.upstream_events: dict[str, list[dict]] = {}      # the JSON lines each upstream printed
        self._events_changed = threading.Condition()
        self._readers: list[threading.Thread] = []
        self._toggles: dict[tuple[str, str], bool] = {}       # (upstream, "overloaded"|"wedged") -> on
        self.nginx: subprocess.Popen | None = None
        self.clients: list[StreamClient] = []
        self.agents: list[Agent] = []
        self.conf_path = os.path.join(self.dir, "nginx.conf")
        self._closed = False

    @classmethod
    def _remove_stale_dirs(cls) -> None:
        """Temp dirs of earlier runs whose process is gone (killed before close() ran)."""
        root = Path(tempfile.gettempdir())
        for path in root.glob(f"{cls.DIR_STEM}*"):
            match = re.match(rf"{re.escape(cls.DIR_STEM)}(\d+)-", path.name)
            if match and not netlab.pid_alive(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)

    # -- building --------------------------------------------------------------------------

    @classmethod
    def build(cls, lab, workers: int = 2, shutdown_delay: float = 3.0) -> "IncidentLab":
        """Builds the lab; ``workers`` nginx worker processes (kubespray's nginx-proxy runs 2, each
        with its own least_conn counts: no shared zone); ``shutdown_delay``: how long an upstream's
        graceful shutdown (terminate_gracefully) keeps serving with /readyz at 503."""
        incident = cls(lab, workers, shutdown_delay)
        try:
            incident._build()
        except BaseException:
            incident.close()
            raise
        return incident

    def _build(self) -> None:
        self.client_ns = self.lab.namespace("cli")
        self.nginx_ns = self.lab.namespace("ngx")
        self.lab.link(self.client_ns, self.nginx_ns, [f"{CLIENT_ADDR}/24"], [f"{NGINX_ADDR}/24"])
        for index, name in enumerate(UPSTREAM_NAMES, start=1):
            namespace = self.lab.namespace(name)
            self.upstream_ns[name] = namespace
            self.lab.link(self.nginx_ns, namespace, [f"10.233.{index}.1/24"], [f"{upstream_address(index)}/24"],
                          a_dev=f"to-{name}", b_dev="to-ngx")
        # A node's conntrack tracks nginx's upstream flows (kube-proxy's rules make it so); here a
        # ctstate rule does, so the agent has entries to delete.
        self.nginx_ns.enable_conntrack()
        for index, name in enumerate(UPSTREAM_NAMES, start=1):
            process = self.upstream_ns[name].popen(
                [sys.executable, "-u", str(Path(__file__).resolve()), "upstream", name, str(L4_PORT), str(L7_PORT),
                 str(LINE_INTERVAL), str(self.shutdown_delay)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
            self.upstream_procs[name] = process
        for name, process in self.upstream_procs.items():
            line = process.stdout.readline()
            assert b'"ready"' in line, f"upstream {name} did not start: {line!r}"
            self.upstream_events[name] = []
            reader = threading.Thread(target=self._read_upstream, args=(name, process.stdout),
                                      name=f"upstream-{name}", daemon=True)
            reader.start()
            self._readers.append(reader)
        self.write_nginx_conf()
        self.start_nginx()

    def nginx_conf_text(self, stream_servers: Iterable[str] | None = None, http_servers: Iterable[str] | None = None) -> str:
        stream_servers = list(stream_servers or (f"{upstream_address(i)}:{L4_PORT}" for i in range(1, 4)))
        http_servers = list(http_servers or (f"{upstream_address(i)}:{L7_PORT}" for i in range(1, 4)))
        return NGINX_CONF.format(
            module=NGINX_MODULE, workers=self.workers, dir=self.dir, nginx=NGINX_ADDR, l4=L4_PORT, l7=L7_PORT,
            stream_upstream=NGINX_STREAM_UPSTREAM, http_upstream=NGINX_HTTP_UPSTREAM,
            stream_servers="\n".join(f"        server {s};" for s in stream_servers),
            http_servers="\n".join(f"        server {s};" for s in http_servers))

    def write_nginx_conf(self, **kwargs) -> str:
        with open(self.conf_path, "w") as conf:
            conf.write(self.nginx_conf_text(**kwargs))
        return self.conf_path

    def start_nginx(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = self.nginx_ns.popen([nginx, "-e", os.path.join(self.dir, "error.log"), "-p", self.dir,
                                          "-c", self.conf_path], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def up() -> bool:
            if self.nginx.poll() is not None:
                raise AssertionError(f"nginx exited {self.nginx.returncode}: {self.nginx.stderr.read().decode()}"
                                     f"\n{self.nginx_error_log()}")
            return all(in_netns(self.nginx_ns.name, _can_connect, NGINX_ADDR, port, 0.5) for port in (L4_PORT, L7_PORT))
        wait_for(up, 10, "nginx to listen")

    def nginx_error_log(self, last: int = 40) -> str:
        try:
            with open(os.path.join(self.dir, "error.log")) as log:
                return "".join(log.readlines()[-last:])
        except OSError:
            return ""

    # -- addresses -------------------------------------------------------------------------

    @staticmethod
    def address(name: str) -> str:
        return upstream_address(UPSTREAM_NAMES.index(name) + 1)

    def backend(self, name: str, kind: str = "l4") -> str:
        """``IP:PORT`` of an upstream as nginx (and the agent) name it."""
        return f"{self.address(name)}:{L4_PORT if kind == 'l4' else L7_PORT}"

    def all_backends(self, kind: str = "l4") -> list[str]:
        return [self.backend(name, kind) for name in UPSTREAM_NAMES]

    # -- actions ---------------------------------------------------------------------------

    def cut(self, name: str) -> tuple[float, float]:
        """Sets upstream ``name``'s own veth end down: it can send nothing. Returns (before, after)."""
        before = time.monotonic()
        self.upstream_ns[name].ip("link", "set", "to-ngx", "down")
        return before, time.monotonic()

    def cut_many(self, names: Sequence[str]) -> tuple[float, float]:
        """Cuts several upstreams as close together as one command allows (``ip -batch``)."""
        before = time.monotonic()
        procs = [subprocess.Popen([netlab.tool("ip") or "ip", "-n", self.upstream_ns[n].name, "link", "set", "to-ngx", "down"])
                 for n in names]
        for proc in procs:
            assert proc.wait(timeout=10) == 0
        return before, time.monotonic()

    def restore(self, name: str) -> None:
        self.upstream_ns[name].ip("link", "set", "to-ngx", "up")

    # -- upstream behaviours (see serve_upstream) ------------------------------------------

    def _read_upstream(self, name: str, stdout) -> None:
        try:
            for raw in iter(stdout.readline, b""):
                try:
                    document = json.loads(raw)
                except ValueError:
                    document = {"unparsed": raw.decode(errors="replace").rstrip("\n")}
                with self._events_changed:
                    self.upstream_events[name].append(document)
                    self._events_changed.notify_all()
        except (OSError, ValueError):
            pass        # the pipe was closed under us at teardown

    def wait_upstream_event(self, name: str, key: str, timeout: float = 10.0, after: float | None = None) -> float:
        """Waits for upstream ``name`` to print ``{key: T}`` and returns T, its time.monotonic() when the
        event happened (the first such event whose T is later than ``after``, if given). Events:
        draining, ending_streams, exiting (graceful shutdown), overloaded, overload_over, wedged,
        unwedged."""
        deadline = time.monotonic() + timeout

        def found():
            return next((event[key] for event in self.upstream_events[name]
                         if key in event and (after is None or event[key] > after)), None)
        with self._events_changed:
            while (value := found()) is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"upstream {name} printed no {key!r} within {timeout}s "
                                         f"(exit {self.upstream_procs[name].poll()}): {self.upstream_events[name]}")
                self._events_changed.wait(min(left, 0.2))
        return value

    def terminate_gracefully(self, name: str) -> float:
        """SIGTERM to upstream ``name``: kube-apiserver's graceful shutdown. For ``shutdown_delay``
        seconds its /readyz answers 503 while it keeps serving every stream and new connection; then it
        ends every stream cleanly (events ``ending_streams``, ``exiting``) and exits 0. Returns the
        time.monotonic() just before the signal was sent."""
        sent = time.monotonic()
        self.upstream_procs[name].send_signal(signal.SIGTERM)
        return sent

    def wait_upstream_exit(self, name: str, timeout: float = 10.0) -> int:
        """Waits for upstream ``name`` to exit; returns its exit status."""
        return self.upstream_procs[name].wait(timeout=timeout)

    def _toggle(self, name: str, what: str, signum: int, on: bool, events: tuple[str, str], timeout: float) -> float:
        if self._toggles.get((name, what), False) == on:
            raise ValueError(f"upstream {name} is already {'' if on else 'not '}{what}")
        sent = time.monotonic()
        self.upstream_procs[name].send_signal(signum)
        value = self.wait_upstream_event(name, events[0] if on else events[1], timeout, after=sent)
        self._toggles[(name, what)] = on
        return value

    def set_overloaded(self, name: str, on: bool = True, timeout: float = 5.0) -> float:
        """Overloads upstream ``name`` (SIGUSR1; ``on=False`` ends it): /readyz and /healthz answer only
        after OVERLOAD_DELAY seconds, streams keep flowing. Returns the upstream's time.monotonic() of the
        change."""
        return self._toggle(name, "overloaded", signal.SIGUSR1, on, ("overloaded", "overload_over"), timeout)

    def set_wedged(self, name: str, on: bool = True, timeout: float = 5.0) -> float:
        """Wedges upstream ``name`` (SIGUSR2; ``on=False`` ends it): it still accepts connections but
        never reads, writes or closes anything: streams stall, probes connect and get no answer.
        Returns the upstream's time.monotonic() of the change."""
        return self._toggle(name, "wedged", signal.SIGUSR2, on, ("wedged", "unwedged"), timeout)

    def drop_new_connections(self, name: str, on: bool = True) -> None:
        """Upstream ``name`` drops every incoming SYN on both its ports (iptables in its namespace), so a
        new connection (a probe, nginx's connect) times out while the established streams keep flowing.
        ``on=False`` removes the rules."""
        for port in (L4_PORT, L7_PORT):
            self.upstream_ns[name].iptables("-I" if on else "-D", "INPUT", "-p", "tcp", "--syn", "--dport", str(port),
                                            "-j", "DROP")

    def start_client(self, l4: int = 30, l7: int = 0) -> StreamClient:
        specs = []
        if l4:
            specs.append(("l4", NGINX_ADDR, L4_PORT, l4, ""))
        if l7:
            specs.append(("l7", NGINX_ADDR, L7_PORT, l7, "/stream"))
        client = StreamClient(self.client_ns, specs)
        self.clients.append(client)
        return client

    def wait_flowing(self, client: StreamClient, timeout: float = 10.0, need_all_backends: bool = True) -> dict:
        """Waits until every stream got a line in the last 0.2 s (and, by default, every upstream
        serves at least one stream of each kind); returns {kind: {backend: count}}."""
        def flowing():
            status = client.status()
            streams = status["streams"]
            if any(s["age"] is None or s["age"] > 0.2 for s in streams):
                return None
            distribution: dict = {}
            for s in streams:
                distribution.setdefault(s["kind"], dict.fromkeys(UPSTREAM_NAMES, 0))[s["backend"]] += 1
            if need_all_backends and any(0 in counts.values() for counts in distribution.values()):
                return None
            return distribution
        try:
            return wait_for(flowing, timeout, "every stream to flow", interval=0.1)
        except AssertionError as error:
            raise AssertionError(f"{error}: {client.status()}\n{self.nginx_error_log()}") from None

    def start_agent(self, binary: str, args: Sequence[str]) -> Agent:
        agent = Agent(self.nginx_ns, binary, args)
        self.agents.append(agent)
        return agent

    def write_file(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def rewrite_unnoticed(self, name: str, text: str) -> str:
        """Replaces a file's content keeping inode, size and mtime, the stamp the agent's file watcher
        compares, so only a SIGHUP can make the agent read it. ``text`` is padded with spaces to the
        old size (it must not be longer)."""
        path = os.path.join(self.dir, name)
        info = os.stat(path)
        data = text.encode()
        if len(data) > info.st_size:
            raise ValueError(f"new content of {name} is longer than the old ({len(data)} > {info.st_size})")
        data = data.rstrip(b"\n") + b" " * (info.st_size - len(data)) + b"\n" if len(data) < info.st_size else data
        with open(path, "r+b") as handle:     # no truncation: the size never changes
            handle.write(data)
        os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
        after = os.stat(path)
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (info.st_ino, info.st_size, info.st_mtime_ns)
        return path

    def nginx_upstream_sockets(self, name: str, kind: str = "l4", state: str = "established") -> list[str]:
        """TCP sockets of the nginx namespace toward an upstream in ``state`` (an ``ss`` state or
        state group: established, syn-sent, connected, ...), as ``ss`` lines. The agent's probes
        run in this namespace too, but a probe is never established for long."""
        address = self.address(name)
        port = L4_PORT if kind == "l4" else L7_PORT
        result = self.nginx_ns.run(["ss", "-Htn", "state", state, "dst", f"{address}:{port}"])
        return [line for line in result.stdout.splitlines() if line.strip()]

    def run_incident(self, client: StreamClient, dead: str, window: float,
                     agent: Agent | None = None, settle: float = 0.0) -> IncidentRun:
        """Cuts ``dead`` once every stream flows (and ``settle`` seconds more), waits ``window``
        seconds, and collects the logs."""
        self.wait_flowing(client)
        time.sleep(settle)
        distribution = self.wait_flowing(client)
        t_cut, t_cut_done = self.cut(dead)
        time.sleep(max(0.0, t_cut + window - time.monotonic()))
        t_end = time.monotonic()
        dump = client.dump()
        reaps = []
        if agent is not None:
            dead_backends = {self.backend(dead, "l4"), self.backend(dead, "l7")}
            reaps = [line for line in agent.reaps() if line.fields.get("backend") in dead_backends]
        return IncidentRun(dead, t_cut, t_cut_done, t_end, dump, distribution, [line.t for line in reaps],
                           agent is not None, reaps)

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the agents, clients, nginx and upstreams this lab started and removes its temp dir.
        Idempotent; the namespaces go with the netlab.Lab."""
        if self._closed:
            return
        self._closed = True
        for agent in self.agents:
            try:
                agent.stop(timeout=3)
            except Exception:
                pass
        for client in self.clients:
            try:
                client.stop()
            except Exception:
                pass
        processes = ([self.nginx] if self.nginx else []) + list(self.upstream_procs.values())
        for process in processes:
            if process.poll() is None:
                if process in self.upstream_procs.values():
                    process.kill()          # SIGTERM would be their graceful shutdown: seconds long
                else:
                    process.terminate()
        for process in processes:
            try:
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=3)
        for reader in self._readers:
            reader.join(timeout=2)
        for process in processes:
            for pipe in (process.stdout, process.stderr):
                if pipe:
                    pipe.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def main(argv: Sequence[str]) -> int:
    if len(argv) >= 2 and argv[1] == "upstream":
        name, tcp_port, http_port, interval = argv[2], int(argv[3]), int(argv[4]), float(argv[5])
        shutdown_delay = float(argv[6]) if len(argv) > 6 else 3.0
        serve_upstream(name, tcp_port, http_port, interval, shutdown_delay)   # SIGTERM: a graceful exit
        return 0
    if len(argv) >= 2 and argv[1] == "client":
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        run_client([tuple(spec) for spec in json.loads(argv[2])])
        return 0
    sys.stderr.write("usage: incident_lab.py upstream NAME TCP_PORT HTTP_PORT INTERVAL [SHUTDOWN_DELAY]"
                     " | client SPECS_JSON\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
