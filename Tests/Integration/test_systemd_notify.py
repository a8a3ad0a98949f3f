"""systemd's Type=notify protocol, as the agent speaks it to a real AF_UNIX datagram socket named by
NOTIFY_SOCKET: READY=1 only once /healthz answers, WATCHDOG=1 at half of WATCHDOG_USEC,
RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a SIGHUP reload (a bad configuration too:
the running one stays), STOPPING=1 before it exits 0 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import threading
import time

import pytest

from lab import kernel
from lab.agent import Agent
from lab.netns import wait_for

LISTEN = ("127.0.0.1", 9761)
BACKEND_PORT = 7461
WATCHDOG_USEC = 400_000


class NotifySocket:
    """The service manager's end: every datagram with the time it arrived."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(path)
        os.chmod(path, 0o777)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self) -> None:
        while True:
            try:
                data = self.socket.recv(4096)
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self.lock:
                self.messages.append((time.monotonic(), fields))

    def received(self, since: float = 0.0) -> list[tuple[float, dict[str, str]]]:
        with self.lock:
            return [(t, m) for t, m in self.messages if t >= since]

    def first(self, key: str, since: float = 0.0, timeout: float = 10.0) -> tuple[float, dict[str, str]]:
        return wait_for(lambda: next(((t, m) for t, m in self.received(since) if key in m), None), timeout,
                        f"{key} on NOTIFY_SOCKET")

    def close(self) -> None:
        self.socket.close()


def config_text(backend_port: int) -> str:
    return (f"listen: {LISTEN[0]}:{LISTEN[1]}\npools:\n  - name: local\n    backends: [\"127.0.0.1:{backend_port}\"]\n"
            "    probe: {type: tcp, interval: 200ms, timeout: 150ms}\n")


@pytest.fixture
def notify(tmp_path):
    listener = NotifySocket(str(tmp_path / "notify"))
    yield listener
    listener.close()


def test_ready_watchdog_reload_and_stopping_in_order(lab, reaper_binary, tmp_path, notify):
    namespace = lab.namespace("svc")
    namespace.peer().listen("tcp", "127.0.0.1", BACKEND_PORT)
    config = tmp_path / "agent.yaml"
    config.write_text(config_text(BACKEND_PORT))
    environment = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    environment.pop("WATCHDOG_PID", None)
    agent = Agent(namespace, reaper_binary, ["--config", str(config)], listen=LISTEN, env=environment)

    ready_at, ready = notify.first("READY")
    assert agent.get("/healthz")[0] == 200, "READY=1 came before the endpoints answered"
    assert ready.get("READY") == "1" and "STATUS" in ready, ready
    first = notify.received()[0][1]
    assert "READY" in first, f"the first message must be READY=1, was {first}"

    time.sleep(2.0)
    pings = [t for t, m in notify.received(ready_at) if m.get("WATCHDOG") == "1"]
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert len(gaps) >= 5, f"{len(pings)} watchdog pings in 2 s"
    print(f"\nwatchdog: {len(pings)} pings in 2 s, median gap {statistics.median(gaps):.3f} s (WATCHDOG_USEC 0.4 s)")
    assert 0.15 <= statistics.median(gaps) <= 0.3 and max(gaps) < WATCHDOG_USEC / 1e6, gaps

    for label, text in (("good", config_text(BACKEND_PORT + 1)), ("bad", "pools: [this is: not valid\n")):
        config.write_text(text)
        signalled = time.monotonic()
        agent.signal(signal.SIGHUP)
        reloading_at, reloading = notify.first("RELOADING", since=signalled)
        monotonic = int(reloading["MONOTONIC_USEC"]) / 1e6
        assert signalled - 0.05 <= monotonic <= reloading_at + 0.05, f"MONOTONIC_USEC {monotonic} vs SIGHUP at {signalled}"
        done_at, done = notify.first("READY", since=reloading_at)
        kernel.speed_bound(done_at - signalled, 2.0, f"{label} reload: READY=1 after SIGHUP")
        print(f"{label} reload: RELOADING=1 +{reloading_at - signalled:.3f} s, READY=1 +{done_at - signalled:.3f} s "
              f"({done.get('STATUS')})")
    assert agent.metrics().value("conn_reaper_config_last_reload_successful") == 0
    assert agent.metrics().value("conn_reaper_config_reloads_total", result="success") == 1

    stopping_signal = time.monotonic()
    code = agent.stop()
    stopping_at, _ = notify.first("STOPPING", since=stopping_signal, timeout=1)
    assert code == 0, agent.describe()
    after = [m for t, m in notify.received(stopping_at) if "WATCHDOG" not in m and "STOPPING" not in m]
    assert not after, f"nothing but watchdog pings may follow STOPPING=1: {after}"


def test_without_notify_socket_the_agent_runs_as_before(lab, reaper_binary, tmp_path):
    namespace = lab.namespace("plain")
    namespace.peer().listen("tcp", "127.0.0.1", BACKEND_PORT)
    config = tmp_path / "agent.yaml"
    config.write_text(config_text(BACKEND_PORT))
    environment = {key: value for key, value in os.environ.items() if key not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    agent = Agent(namespace, reaper_binary, ["--config", str(config)], listen=LISTEN, env=environment)
    agent.wait_ready()
    assert agent.stop() == 0, agent.describe()
    assert "NOTIFY_SOCKET" not in agent.log_text(None)
