"""Drivers for the traffic peer (``python3 -m lab.peer ROLE``): one process class for every role.

A PeerProcess starts a role inside a namespace, reads its greeting, and then reads its stdout on a
thread of its own: answers go to a queue that ``request`` waits on, events (``{"event": ...}``) to a
list that ``wait_event`` and ``events`` read. Peer, StreamClient and BulkPeer add each role's verbs.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from lab.netns import LabError, stop_child

#: The folder holding the ``lab`` package: a peer imports its role from there.
LAB_ROOT = Path(__file__).resolve().parents[1]


class PeerError(LabError):
    pass


def peer_argv(role: str, *args) -> list[str]:
    return [sys.executable, "-u", "-m", "lab.peer", role, *map(str, args)]


def peer_environment() -> dict:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(LAB_ROOT), environment.get("PYTHONPATH")]))
    environment["PYTHONDONTWRITEBYTECODE"] = "1"
    return environment


class PeerProcess:
    """One traffic peer of any role. ``namespace`` is a lab Namespace, or a namespace's name (the
    benchmarks' own namespaces), or None for the caller's namespace."""

    def __init__(self, namespace, role: str, *args, start_new_session: bool = False, preexec_fn=None,
                 ready_timeout: float = 10.0) -> None:
        self.role = role
        self.where = getattr(namespace, "name", namespace) or "own namespace"
        self.stderr_file = tempfile.TemporaryFile(mode="w+")
        argv = peer_argv(role, *args)
        options = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr_file, env=peer_environment(),
                       start_new_session=start_new_session, preexec_fn=preexec_fn)
        if namespace is None:
            self.process = subprocess.Popen(argv, **options)
        elif isinstance(namespace, str):
            self.process = subprocess.Popen(["ip", "netns", "exec", namespace, *argv], **options)
        else:
            self.process = namespace.popen(argv, **options)
        self.answers: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"peer-{role}", daemon=True)
        self._reader.start()
        greeting = self._answer(ready_timeout, "its greeting")
        if greeting.get("ready") != role:
            raise PeerError(f"{role} peer in {self.where} did not start: {greeting}")
        self.greeting = greeting
        self.pid = greeting["pid"]

    def __repr__(self) -> str:
        return f"PeerProcess({self.role}, {self.where}, pid={self.pid})"

    def _read(self) -> None:
        for raw in iter(self.process.stdout.readline, b""):
            message = json.loads(raw)
            if "event" in message:
                with self._changed:
                    self.events.append(message)
                    self._changed.notify_all()
            else:
                self.answers.put(message)
        self.answers.put(None)
        with self._changed:
            self._changed.notify_all()

    def stderr(self) -> str:
        self.stderr_file.seek(0)
        return self.stderr_file.read()[-4000:]

    def _answer(self, timeout: float, what: str) -> dict:
        try:
            answer = self.answers.get(timeout=timeout)
        except queue.Empty:
            raise PeerError(f"{self.role} peer in {self.where} gave no {what} within {timeout}s; "
                            f"stderr: {self.stderr()}") from None
        if answer is None:
            self.answers.put(None)
            raise PeerError(f"{self.role} peer in {self.where} exited ({self.process.poll()}); stderr: {self.stderr()}")
        return answer

    def send(self, op: str, **fields) -> None:
        if self.process.poll() is not None:
            raise PeerError(f"{self.role} peer in {self.where} is gone; stderr: {self.stderr()}")
        self.process.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
        self.process.stdin.flush()

    def receive(self, timeout: float = 600, what: str = "answer") -> dict:
        """The next answer; PeerError when it is not ok."""
        answer = self._answer(timeout, what)
        if not answer.get("ok"):
            raise PeerError(f"{self.role} peer in {self.where}: {answer.get('error')}")
        return answer

    def request(self, op: str, answer_timeout: float = 30, **fields) -> dict:
        """Sends one request and returns its answer; raises PeerError when it is not ok."""
        self.send(op, **fields)
        return self.receive(answer_timeout, f"answer to {op} {fields}")

    def wait_event(self, predicate: Callable[[dict], bool] | str, timeout: float, after: float = 0.0) -> dict | None:
        """The first event (at or after ``after``) that matches; None when none came within ``timeout``.
        A string matches events of that name."""
        matches = (lambda e: e["event"] == predicate) if isinstance(predicate, str) else predicate
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((e for e in self.events if e["t"] >= after and matches(e)), None)
                left = deadline - time.monotonic()
                if found or left <= 0 or not self._reader.is_alive():
                    return found
                self._changed.wait(min(left, 0.2))

    def events_named(self, name: str, **fields) -> list[dict]:
        with self._changed:
            return [e for e in self.events if e["event"] == name and all(e.get(k) == v for k, v in fields.items())]

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 3.0) -> None:
        """Asks the peer to quit (a role driven by signals gets SIGTERM), then makes sure it is gone."""
        stop_child(self.process, quit_line=b'{"op": "quit"}\n', grace=grace)
        self._reader.join(timeout=2)
        self.stderr_file.close()


class Peer(PeerProcess):
    """The ``sockets`` role: echo servers and client sockets with ids. Start with Namespace.peer()."""

    def __init__(self, namespace) -> None:
        super().__init__(namespace, "sockets")

    def listen(self, proto: str, host: str, port: int, v6only: bool = False) -> int:
        """Starts an echo server; returns its id. host "::" with v6only False is dual-stack."""
        return self.request("listen", proto=proto, host=host, port=port, v6only=v6only)["id"]

    def connect(self, host: str, port: int, proto: str = "tcp", count: int = 1, wait: bool = True,
                family: str | None = None, timeout: float = 5, source: str | None = None) -> list[int]:
        """Opens ``count`` client sockets; returns their ids. wait=False leaves a TCP connect pending;
        ``source`` binds the local address; ``family`` ("inet"/"inet6") overrides the guess from host."""
        fields = dict(proto=proto, host=host, port=port, count=count, wait=wait, timeout=timeout)
        if family:
            fields["family"] = family
        if source:
            fields["source"] = source
        return self.request("connect", answer_timeout=30 + count * timeout / 10, **fields)["ids"]

    def connect_one(self, host: str, port: int, **kwargs) -> int:
        return self.connect(host, port, count=1, **kwargs)[0]

    def probe(self, ids: Sequence[int], timeout: float = 2.0) -> list[str]:
        """Each socket's state: "ok" when a byte round-trips, else an errno name (e.g.
        "ECONNABORTED", seen on the owner's next recv), "eof" or "timeout"."""
        return self.request("probe", answer_timeout=timeout + 30, ids=list(ids), timeout=timeout)["results"]

    def state(self, ids: Sequence[int]) -> list[str]:
        """Each socket's state without writing to it: "ok", "eof" or an errno name."""
        return self.request("state", ids=list(ids))["results"]

    def connect_status(self, ids: Sequence[int], timeout: float = 0) -> tuple[list[str], list[float | None]]:
        """Results of pending non-blocking connects ("pending", "ok" or an errno name) and when
        each was seen (seconds after the request)."""
        answer = self.request("connect_status", answer_timeout=timeout + 30, ids=list(ids), timeout=timeout)
        return answer["results"], answer["elapsed"]

    def connect_outcome(self, host: str, port: int, timeout: float = 5) -> tuple[str, float | None]:
        """One non-blocking connect and how it ended ("ok", an errno name or "pending"), with the
        seconds from its start to then."""
        ident = self.connect_one(host, port, wait=False, timeout=timeout)
        answer = self.request("connect_status", answer_timeout=timeout + 30, ids=[ident], timeout=timeout)
        self.close_sockets([ident])
        return answer["results"][0], answer["since_connect"][0]

    def stats(self, listener: int) -> dict:
        return self.request("stats", id=listener)

    def close_sockets(self, ids: Sequence[int]) -> None:
        self.request("close", ids=list(ids))


class BulkPeer(PeerProcess):
    """A ``bulk-*`` role (lab/peer/bulk.py): thousands of connections, counted per destination."""

    def __init__(self, namespace, role: str, index: int = 0, *args, **options) -> None:
        super().__init__(namespace, role, *args, start_new_session=True, **options)
        self.name = f"{role}{index}"
        self.capacity = self.greeting.get("capacity", 0)
        self.live: dict[str, int] = {}

    @property
    def held(self) -> int:
        return sum(self.live.values())

    def receive(self, timeout: float = 600, what: str = "answer") -> dict:
        answer = super().receive(timeout, what)
        if "live" in answer:
            self.live = answer["live"]
        return answer

    def call(self, op: str, **fields) -> dict:
        self.send(op, **fields)
        return self.receive()


def broadcast(peers: Sequence[BulkPeer], op: str, **fields) -> list[dict]:
    """Sends one request to several peers at once (they work in parallel), then collects the answers."""
    for peer in peers:
        peer.send(op, **fields)
    return [peer.receive() for peer in peers]


class StreamClient(PeerProcess):
    """The ``streams`` role: long-lived streams through the balancer (lab/peer/streams.py)."""

    def __init__(self, namespace, specs: Sequence[tuple[str, str, int, int, str]]) -> None:
        super().__init__(namespace, "streams", json.dumps(list(specs)))

    def status(self) -> dict:
        return self.request("status")

    def dump(self):
        from lab.analysis import StreamDump
        return StreamDump.parse(self.request("dump", answer_timeout=60))


class ChurnPeer(PeerProcess):
    """The ``churn`` role (lab/peer/churn.py): a stream of connections toward many targets, each held
    until it ends, every end counted by target and by how it ended."""

    def __init__(self, namespace) -> None:
        super().__init__(namespace, "churn", start_new_session=True)

    def start(self, targets: Sequence[str], port: int, rate: float, seed: int | None = None) -> None:
        self.request("start", targets=list(targets), port=port, rate=rate, seed=seed)

    def tally(self) -> dict:
        return self.request("tally")

    def finish(self, settle: float = 10.0) -> dict:
        """Stops the stream, lets pending connects end (at most ``settle`` s), looks at every held
        connection once more and closes them all: the final tally, with ``final`` per target."""
        return self.request("finish", answer_timeout=settle + 60, settle=settle)
