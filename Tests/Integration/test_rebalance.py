"""Paced rebalancing (issue 12): when a backend returns after a failover, its fair share of the
long-lived connections moves back to it, gently. In the lab of lab/incident.py (real nginx stream with
least_conn, 2 workers as kubespray runs it, three upstreams that write a line every 50 ms to every
stream), with HTTP probes of /readyz every 200 ms, rise 2, fall 2, the agent in nginx's namespace:

- 90 streams; nothing moves while they are spread within the tolerance; upstream 3's link goes down
  (a silent death), it is reaped and its streams go to the others; then its link comes back. Within
  60 s it serves at least 24 streams (80% of its fair 30); at no second are more than 3 streams ended;
  "talkers", streams whose client keeps sending, are never ended (data in flight);
- without `rebalance` it stays at 0;
- a backend that flaps (down and up every 2 s) pulls nothing;
- a non-boolean `rebalance`, a tolerance outside 1-100% or an owner that is not auto, any or uid:N: the
  key or flag named, exit 2, nothing touched.

Each test prints its figures (`-s` shows them) for the README.
"""

from __future__ import annotations

import os
import time


from lab.agent import Agent, backend_flags, pool_yaml
from lab.incident import L4_PORT, L7_PORT, UPSTREAM_NAMES, IncidentLab, start_agent
from lab.netns import wait_for

STREAMS = 90
TALKERS = 4
RETURNED = "up3"
PROBE = {"type": "http", "path": "/readyz", "port": L7_PORT, "expect_status": [200], "interval": "200ms",
         "timeout": "150ms", "rise": 2, "fall": 2}
PROBE_FLAGS = ["--probe", "http", "--probe-port", str(L7_PORT), "--path", "/readyz", "--interval", "200ms",
               "--timeout", "150ms", "--rise", "2", "--fall", "2"]
HOLD_DOWN = 10.0          # RebalanceSettings.holdDown, for a first return




def agent_config(incident: IncidentLab, **pool_keys) -> str:
    pool = {"name": "stream", "backends": incident.all_backends("l4"), "probe": PROBE, **pool_keys}
    return incident.write_file("agent.yaml", pool_yaml([pool]))


def streams_on(client) -> dict[str, int]:
    counts = dict.fromkeys(UPSTREAM_NAMES, 0)
    for stream in client.status()["streams"]:
        if stream["backend"] in counts and stream["age"] is not None and stream["age"] < 0.5:
            counts[stream["backend"]] += 1
    return counts


def ends_between(client, start: float, end: float) -> list[float]:
    return sorted(c["end"] for s in client.dump().streams for c in s.connections
                  if c["end"] is not None and start < c["end"] <= end)


def most_in_one_second(times: list[float]) -> int:
    return max((sum(1 for u in times if t <= u < t + 1.0) for t in times), default=0)


def nginx_workers(incident: IncidentLab) -> dict[str, dict[str, int]]:
    """Upstream connections per nginx worker and upstream (``ss -p``, as root): each worker places
    new connections by its own least_conn counts, which is what limits a rebalance."""
    lines = incident.nginx_ns.run(["ss", "-Htnp", "state", "established"]).stdout.splitlines()
    workers: dict[str, dict[str, int]] = {}
    for name in UPSTREAM_NAMES:
        for line in lines:
            if f"{incident.address(name)}:{L4_PORT}" in line and "pid=" in line:
                pid = line.split("pid=", 1)[1].split(",", 1)[0]
                workers.setdefault(pid, dict.fromkeys(UPSTREAM_NAMES, 0))[name] += 1
    return workers


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (for the figure the test prints, not a benchmark)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fail_over(incident: IncidentLab, agent: Agent, client) -> float:
    """Cuts the returning upstream, waits for its reap and for every stream to flow from the others;
    returns the cut time."""
    backend = incident.backend(RETURNED)
    t_cut, _ = incident.cut(RETURNED)
    agent.wait_states({f"stream/{backend}": "dead"}, timeout=10)
    wait_for(lambda: agent.reaps(backend), 5, "the reap of the dead upstream")
    incident.wait_flowing(client, timeout=10, need_all_backends=False)
    counts = streams_on(client)
    assert counts[RETURNED] == 0 and sum(counts.values()) == STREAMS, counts
    return t_cut


def talkers_ended(talkers) -> list[dict]:
    return [c for s in talkers.dump().streams for c in s.connections if c["end"] is not None]


def rebalance_closes(agent: Agent) -> list:
    return agent.find("rebalanced connection ended", reason="rebalance")


def test_a_returned_backend_gets_its_share_back_paced_and_talkers_are_never_ended(incident, reaper_binary):
    client = incident.start_client(l4=STREAMS)
    incident.wait_flowing(client, timeout=20)
    agent = start_agent(incident, reaper_binary, ["--config", agent_config(incident, rebalance=True,
                                                                           rebalance_tolerance="20%")])
    agent.wait_states({f"stream/{b}": "up" for b in incident.all_backends("l4")})
    # Balanced by least_conn: once the hold-down passed, a census finds them within tolerance: nothing moves.
    start = time.monotonic()
    time.sleep(HOLD_DOWN + 3)
    before = streams_on(client)
    assert not rebalance_closes(agent), agent.log_text()
    assert ends_between(client, start, time.monotonic()) == [], before
    metrics = agent.metrics()
    assert sum(metrics.value("conn_reaper_backend_connections", pool="stream", backend=b)
               for b in incident.all_backends("l4")) == STREAMS, metrics.text

    fail_over(incident, agent, client)
    # Talkers: streams whose client writes a line every 100 ms (an upload, or requests one after
    # another): nginx's upstream socket always has data sent a moment ago, so rebalancing must never pick it.
    talkers = incident.start_client(l4=TALKERS, send_every=0.1)
    try:
        wait_for(lambda: all(s["backend"] for s in talkers.status()["streams"]), 5, "every talker to get lines")
        assert not any(s["backend"] == RETURNED for s in talkers.status()["streams"])
        incident.restore(RETURNED)
        t_return, cpu_at_return = time.monotonic(), cpu_seconds(agent.process.pid)
        agent.wait_states({f"stream/{incident.backend(RETURNED)}": "up"}, timeout=10)
        figures, split_at_return = {}, nginx_workers(incident)
        for mark in (10, 30, 60):
            time.sleep(max(0.0, t_return + mark - time.monotonic()))
            figures[mark] = streams_on(client)
        ends = ends_between(client, t_return, time.monotonic())
        cpu = (cpu_seconds(agent.process.pid) - cpu_at_return) / (time.monotonic() - t_return)
        closes = rebalance_closes(agent)
        print(f"\nrebalance: streams per upstream at +10/+30/+60 s: {figures}; {len(closes)} closes, "
              f"{len(ends)} streams ended, at most {most_in_one_second(ends)} in one second; "
              f"talkers ended: {len(talkers_ended(talkers))}; agent CPU {cpu:.2%} of a core; first close +{closes[0].t - t_return:.1f} s, "
              f"last +{closes[-1].t - t_return:.1f} s" if closes else f"\nno closes: {figures}")
        print(f"nginx workers' upstream connections at the return: {split_at_return}, at +60 s: {nginx_workers(incident)}")
        if closes:
            print(f"an audit line: {closes[0].text}")
        assert figures[60][RETURNED] >= 24, f"{figures}\n{agent.log_text()}"
        assert most_in_one_second(ends) <= 3, ends
        assert not talkers_ended(talkers), f"a talker was ended: {talkers_ended(talkers)}\n{agent.log_text()}"
        # Every stream ended was one the agent closed to rebalance (each close ends one client stream).
        assert len(ends) == len(closes), (len(ends), len(closes))
        metrics = agent.metrics()
        closed = sum(metrics.value("conn_reaper_rebalance_closed_total", pool="stream", backend=b)
                     for b in incident.all_backends("l4"))
        assert closed == len(closes)
        assert metrics.value("conn_reaper_rebalance_closed_total", pool="stream", backend=incident.backend(RETURNED)) == 0
        assert agent.find("rebalance started: connections are spread outside the tolerance")
        wait_for(lambda: agent.find("rebalance done: every backend within the tolerance"), 15, "the episode's end")
    finally:
        talkers.stop()


def test_without_rebalance_the_returned_backend_stays_empty(incident, reaper_binary):
    client = incident.start_client(l4=STREAMS)
    incident.wait_flowing(client, timeout=20)
    agent = start_agent(incident, reaper_binary, ["--config", agent_config(incident)])
    agent.wait_states({f"stream/{b}": "up" for b in incident.all_backends("l4")})
    fail_over(incident, agent, client)
    incident.restore(RETURNED)
    t_return = time.monotonic()
    agent.wait_states({f"stream/{incident.backend(RETURNED)}": "up"}, timeout=10)
    time.sleep(max(0.0, t_return + HOLD_DOWN + 10 - time.monotonic()))
    counts = streams_on(client)
    print(f"\nwithout rebalance, {HOLD_DOWN + 10:.0f} s after the return: {counts}")
    assert counts[RETURNED] == 0, counts
    assert ends_between(client, t_return, time.monotonic()) == []
    assert not rebalance_closes(agent)
    assert not agent.metrics().has("conn_reaper_backend_connections")


def test_a_flapping_backend_pulls_nothing(incident, reaper_binary):
    client = incident.start_client(l4=STREAMS)
    incident.wait_flowing(client, timeout=20)
    agent = start_agent(incident, reaper_binary, ["--config", agent_config(incident, rebalance=True)])
    agent.wait_states({f"stream/{b}": "up" for b in incident.all_backends("l4")})
    fail_over(incident, agent, client)
    start = time.monotonic()
    for _ in range(6):        # up 2 s, down 2 s: 24 s, never up for the hold-down
        incident.restore(RETURNED)
        time.sleep(2)
        incident.cut(RETURNED)
        time.sleep(2)
    counts = streams_on(client)
    ups = len(agent.find("backend up", since=start, backend=incident.backend(RETURNED)))
    print(f"\nflapping for 24 s: came up {ups} times; streams {counts}")
    assert ups >= 3, agent.log_text()       # the agent did see it come back, again and again
    assert counts[RETURNED] == 0, counts
    assert not rebalance_closes(agent)
    assert not agent.find("rebalance started: connections are spread outside the tolerance")
    assert ends_between(client, start, time.monotonic()) == []


def test_bad_rebalance_values_exit_2_naming_the_key_and_touch_nothing(incident, reaper_binary):
    client = incident.start_client(l4=6)
    incident.wait_flowing(client)
    good = {"name": "stream", "backends": incident.all_backends("l4"), "probe": PROBE}
    cases = [("pools[0].rebalance", {"rebalance": "sometimes"}), ("pools[0].rebalance", {"rebalance": 1}),
             ("pools[0].rebalance_tolerance", {"rebalance": True, "rebalance_tolerance": "0%"}),
             ("pools[0].rebalance_tolerance", {"rebalance": True, "rebalance_tolerance": "101%"}),
             ("pools[0].rebalance_tolerance", {"rebalance": True, "rebalance_tolerance": "lots"}),
             ("pools[0].rebalance_rate", {"rebalance": True, "rebalance_rate": 0}),
             ("pools[0].rebalance_owner", {"rebalance": True, "rebalance_owner": "nginx"}),
             ("pools[0].rebalance_owner", {"rebalance": True, "rebalance_owner": "uid:-1"})]
    for key, extra in cases:
        path = incident.write_file("bad.yaml", pool_yaml([{**good, **extra}]))
        result = incident.nginx_ns.run([reaper_binary, "run", "--config", path], check=False, timeout=20)
        assert result.returncode == 2, f"{extra}: exit {result.returncode}\n{result.stderr}"
        assert key in result.stderr and "invalid configuration" in result.stderr, f"{extra}: {result.stderr}"
    base = [reaper_binary, "run", *backend_flags(incident.all_backends("l4")), *PROBE_FLAGS, "--rebalance"]
    for value in ("0%", "150", "half"):
        result = incident.nginx_ns.run([*base, "--rebalance-tolerance", value], check=False, timeout=20)
        assert result.returncode == 2 and "--rebalance-tolerance" in result.stderr, f"{value}: {result.stderr}"
    result = incident.nginx_ns.run([*base, "--rebalance-owner", "root"], check=False, timeout=20)
    assert result.returncode == 2 and "--rebalance-owner" in result.stderr and "'root'" in result.stderr, result.stderr
    # The good values start an agent that is ready and ends nothing (6 streams are within any tolerance).
    agent = start_agent(incident, reaper_binary, [*backend_flags(incident.all_backends("l4")), *PROBE_FLAGS, "--rebalance",
                                                  "--rebalance-tolerance", "15%", "--rebalance-rate", "0.5",
                                                  "--rebalance-owner", "uid:65534"])
    agent.wait_states({f"default/{b}": "up" for b in incident.all_backends("l4")})
    assert agent.stop() == 0, agent.log_text()
    assert not rebalance_closes(agent)
    assert all(len(s.connections) == 1 for s in client.dump().streams)
    incident.wait_flowing(client, need_all_backends=False)
