"""The one agent driver: ``conn-reaper run ...`` inside a lab namespace, its log read line by line
(logfmt, with arrival times), its endpoints fetched from inside the namespace, its YAML written by
``pool_yaml``. ``shape`` runs it with the credentials of a deployment mode (lab.privileges).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import subprocess
import threading
import time
from typing import Sequence

from lab.metrics import Metrics, parse_logfmt
from lab.netns import can_connect, http_get, in_netns, stop_child, wait_for
from lab.privileges import wrapper

AGENT_LISTEN = ("127.0.0.1", 9747)      # inside the agent's namespace


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


def parse_listen(listen: str | tuple[str, int]) -> tuple[str, int]:
    """Where to reach an agent that listens on ``listen``: a wildcard is reached on loopback."""
    if isinstance(listen, str):
        host, port = listen.rsplit(":", 1)
        listen = (host.strip("[]"), int(port))
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen[0], listen[0])
    return host, listen[1]


class Agent:
    """``conn-reaper run ARGS`` inside a namespace; stderr collected line by line with arrival times.
    The lab stops it at the latest when it closes; ``stop`` stops it gracefully."""

    def __init__(self, namespace, binary: str, args: Sequence[str], *, shape: str | None = None,
                 listen: str | tuple[str, int] = AGENT_LISTEN, **popen_options) -> None:
        self.namespace = namespace
        self.listen = parse_listen(listen)
        self.argv = [*(wrapper(shape) if shape else []), binary, "run", *map(str, args)]
        self.started = time.monotonic()
        self.process = namespace.popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, **popen_options)
        self.pid = self.process.pid   # `ip netns exec` execs the agent: this is its own pid
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

    def tail(self, start: int) -> list[LogLine]:
        """The lines from index ``start`` on: a long run's reader takes only what is new."""
        with self._lock:
            return self.lines[start:]

    def log_text(self, last: int | None = 60) -> str:
        lines = self.log()
        return "\n".join(line.text for line in (lines[-last:] if last else lines))

    def describe(self) -> str:
        return f"`{' '.join(self.argv)}` (exit {self.process.poll()})\n--- log ---\n{self.log_text(80)}"

    def find(self, msg: str | None = None, since: float = 0.0, **fields: str) -> list[LogLine]:
        """Log lines (read after ``since``) with this msg and these field values."""
        return [line for line in self.log() if line.t >= since and (msg is None or line.msg == msg)
                and all(line.fields.get(k) == v for k, v in fields.items())]

    def reaps(self, backend: str | None = None, since: float = 0.0) -> list[LogLine]:
        """``msg=reaped`` lines, for one backend (``IP:PORT``) or all."""
        return self.find("reaped", since, **({"backend": backend} if backend else {}))

    def wait_line(self, predicate, timeout: float, since: float = 0.0) -> LogLine | None:
        """The first line read after ``since`` for which ``predicate(line)`` holds; None after ``timeout``.
        AssertionError when the agent exits first."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((line for line in self.log() if line.t >= since and predicate(line)), None)
            if found:
                return found
            self.check_running()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)

    def wait_log(self, pattern: str, timeout: float = 15) -> re.Match:
        """The first match of ``pattern`` (multi-line regex) in the log; AssertionError after ``timeout``
        or once the agent exited without it."""
        deadline = time.monotonic() + timeout
        while True:
            exited = not self.running()
            if exited:
                self._reader.join(timeout=2)
            match = re.search(pattern, self.log_text(None), re.M)
            if match:
                return match
            if exited or time.monotonic() >= deadline:
                raise AssertionError(f"no log line matching {pattern!r} within {timeout}s: {self.describe()}")
            time.sleep(0.05)

    # -- endpoints, from inside the namespace ----------------------------------------------

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
            return in_netns(self.namespace.name, can_connect, self.listen[0], self.listen[1], 0.5)
        wait_for(listening, timeout, f"conn-reaper to listen on {self.listen}")

    def wait_ready(self, timeout: float = 15.0) -> None:
        self.wait_listening(timeout)
        try:
            wait_for(lambda: self.check_running() or self.get("/readyz")[0] == 200, timeout, "/readyz to answer 200")
        except AssertionError as error:
            raise AssertionError(f"{error}: {self.describe()}") from None

    def wait_states(self, expected: dict[str, str], timeout: float = 10.0) -> dict[str, str]:
        """Waits until /status shows these states (keys as in backend_states())."""
        def matches():
            states = self.backend_states()
            return states if all(states.get(k) == v for k, v in expected.items()) else None
        try:
            return wait_for(matches, timeout, f"backend states {expected}", interval=0.05)
        except AssertionError as error:
            raise AssertionError(f"{error}; now {self.backend_states()}\n{self.log_text()}") from None

    # -- lifetime --------------------------------------------------------------------------

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
        stop_child(self.process, grace=timeout)
        self._reader.join(timeout=2)
        if stdout:
            self.stdout = stdout.read().decode(errors="replace")
            stdout.close()
        return self.process.returncode

    def close(self) -> None:
        """Kills the agent if it still runs (a test that failed before ``stop``)."""
        if self.running():
            self.stop(timeout=0.5)


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


def backend_flags(backends) -> list[str]:
    return [arg for backend in backends for arg in ("--backend", backend)]


def rewrite_unnoticed(path: str, text: str) -> str:
    """Replaces a file's content keeping inode, size and mtime, the stamp the agent's file watcher
    compares, so only a SIGHUP can make the agent read it. ``text`` is padded with spaces to the old
    size (it must not be longer)."""
    info = os.stat(path)
    data = text.encode()
    if len(data) > info.st_size:
        raise ValueError(f"new content of {path} is longer than the old ({len(data)} > {info.st_size})")
    data = data.rstrip(b"\n") + b" " * (info.st_size - len(data)) + b"\n" if len(data) < info.st_size else data
    with open(path, "r+b") as handle:     # no truncation: the size never changes
        handle.write(data)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (info.st_ino, info.st_size, info.st_mtime_ns)
    return path
