"""The status endpoint under a thousand concurrent requests and slowloris clients must not slow the
probes or the reaps, and must stay bounded itself.

One run, two phases of equal length: quiet, then loaded (1,000 clients fetching /metrics and
/status back to back on fresh connections, plus 200 slowloris clients sending a request head one
byte a second). Probe timing is read from outside: conntrack's NEW events (with kernel timestamps)
for every probe connection toward two backends that stay up, probed every 100 ms. In each phase one
more backend dies silently; the time from its cut to its audit line is the reap's delay.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import threading
import time

from lab.agent import Agent, pool_yaml
from lab.netns import tool, wait_for
from lab.traffic import PeerProcess

LISTEN = ("127.0.0.1", 19749)
PORT = 19090
UP = ["10.241.3.2", "10.241.3.3"]
DYING = ["10.241.3.4", "10.241.3.5"]
PHASE = 8.0
INTERVAL_MS = 100


class ProbeClock:
    """`conntrack -E -e NEW` in the agent's namespace: when each probe connection toward PORT began."""

    def __init__(self, namespace) -> None:
        self.process = namespace.popen([tool("conntrack"), "-E", "-e", "NEW", "-p", "tcp", "--dport", str(PORT),
                                        "-o", "timestamp"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.events: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            match = re.match(r"\[(\d+\.\d+)\].*?dst=(\S+)", line)
            if match:
                self.events.append((float(match.group(1)), match.group(2)))

    def intervals(self, address: str, start: float, end: float) -> list[float]:
        times = [t for t, dst in list(self.events) if dst == address and start <= t < end]
        return [(b - a) * 1000 for a, b in zip(times, times[1:])]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=5)


def summary(intervals: list[float]) -> dict:
    deviations = sorted(abs(i - INTERVAL_MS) for i in intervals)
    return {"probes": len(intervals) + 1, "median_ms": round(statistics.median(intervals), 1),
            "p99_dev_ms": round(deviations[int(0.99 * (len(deviations) - 1))], 1), "max_ms": round(max(intervals), 1)}


def test_status_endpoint_load_does_not_slow_probes_or_reaps(fault_lab, reaper_binary, tmp_path):
    agent_ns, server = fault_lab.namespace("agt"), fault_lab.namespace("srv")
    fault_lab.link(agent_ns, server, ["10.241.3.1/24"], [f"{a}/24" for a in UP + DYING])
    agent_ns.enable_conntrack()
    echo = server.peer()
    for address in UP + DYING:
        echo.listen("tcp", address, PORT)
    held = agent_ns.peer()
    held_ids = {address: held.connect(address, PORT, count=5) for address in DYING}
    config = tmp_path / "agent.yaml"
    config.write_text(pool_yaml(
        [{"name": "api", "backends": [f"{a}:{PORT}" for a in UP + DYING], "early_detection": False,
          "probe": {"type": "tcp", "interval": f"{INTERVAL_MS}ms", "timeout": "80ms", "fall": 2, "rise": 1}}],
        listen=LISTEN))
    clock = ProbeClock(agent_ns)
    agent = Agent(agent_ns, reaper_binary, ["--config", str(config)], listen=LISTEN)
    agent.wait_ready()
    load = PeerProcess(agent_ns, "http-load")
    try:
        before = agent.metrics()
        delays = []
        phases = []
        for index, loaded in enumerate((False, True)):
            if loaded:
                load.send("run", host=LISTEN[0], port=LISTEN[1], paths=["/metrics", "/status"], concurrency=1000,
                          seconds=PHASE, slow=200, byte_every=1.0)
                time.sleep(1.0)   # the clients are all connected and fetching
            start = time.time()
            time.sleep(PHASE / 2)
            dying = DYING[index]
            echo_drop = ["-I", "INPUT", "-d", dying, "-j", "DROP"]
            server.iptables(*echo_drop)
            cut = time.monotonic()
            line = agent.wait_line(lambda l: l.msg == "reaped" and l.fields.get("backend") == f"{dying}:{PORT}",
                                   PHASE, since=cut)
            assert line is not None, agent.log_text()
            delays.append(round((line.t - cut) * 1000))
            time.sleep(max(0.0, start + PHASE - time.time() - (1.0 if loaded else 0)))
            phases.append((start, time.time()))
        result = load.receive(60, "the load's result")
        during = agent.metrics()
    finally:
        clock.stop()
    quiet = [summary(clock.intervals(a, *phases[0])) for a in UP]
    loaded = [summary(clock.intervals(a, *phases[1])) for a in UP]
    fds = (before.value("process_open_fds"), during.value("process_open_fds"))
    rss = (before.value("process_resident_memory_bytes") / 1e6, during.value("process_resident_memory_bytes") / 1e6)
    print(f"\nprobe intervals, quiet: {quiet}\nprobe intervals, loaded: {loaded}\ncut to audit line (quiet, loaded): "
          f"{delays} ms\nload: {result}\nagent open fds {fds[0]:.0f} -> {fds[1]:.0f}, RSS {rss[0]:.1f} -> {rss[1]:.1f} MB")
    assert result["requests"] > 1000, result
    # Within the noise of a shared 2-core machine (the load generator itself takes most of a core; in
    # a full suite run at load average 9 one gap reached 258 ms). Before the endpoint had its own
    # thread and limits: gaps up to 832 ms, p99 deviation 294 ms, the reap 460 ms later under load.
    for calm, busy in zip(quiet, loaded):
        assert abs(busy["median_ms"] - calm["median_ms"]) <= 10, (quiet, loaded)
        assert busy["p99_dev_ms"] <= max(3 * calm["p99_dev_ms"], 150), (quiet, loaded)
    assert max(busy["max_ms"] for busy in loaded) <= 3 * INTERVAL_MS, (quiet, loaded)
    assert delays[1] <= delays[0] + 250, delays
    # Bounded: the slowloris clients were cut off, not kept; memory did not grow with the load.
    assert result["slow_open"] == 0 and result["slow_closed_after_s"] <= 6, result
    assert rss[1] - rss[0] < 50, rss
    assert held.probe(held_ids[DYING[0]]) == ["ECONNABORTED"] * 5
    assert agent.stop() == 0, agent.describe()
