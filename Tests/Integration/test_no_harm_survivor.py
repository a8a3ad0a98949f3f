"""Incident 2, never made by the agent: two of three upstreams lose power, their streams move to the
third, which then turns slow under the load (its /readyz times out) while it keeps serving every
stream. The agent reaps the two dead ones and never drains the sole survivor, whatever its probes
say: its clients would come straight back to it, the OpenShift failover loop. The other way: the
same slow upstream beside two that answer is drained once `drain_timeout` passes (paced closes).

Real nginx (L7, least_conn, proxy_next_upstream) in front of three streaming upstreams (lab/incident.py),
HTTP probes of /readyz at 200ms/150ms, rise 2, fall 2, drain_timeout 2s."""

from __future__ import annotations

import time

import pytest

from lab.agent import pool_yaml
from lab.incident import UPSTREAM_NAMES, IncidentLab, start_agent
from lab.netns import wait_for

FAST = {"type": "http", "path": "/readyz", "expect_status": [200], "interval": "200ms", "timeout": "150ms",
        "rise": 2, "fall": 2}
DRAIN = 2.0
SURVIVOR = "up2"
STREAMS = 9


@pytest.fixture
def incident(build_incident):
    return build_incident()


def started(incident: IncidentLab, binary: str):
    config = incident.write_file("agent.yaml", pool_yaml([{
        "name": "http", "backends": incident.all_backends("l7"), "probe": FAST, "drain_timeout": f"{DRAIN:g}s"}]))
    agent = start_agent(incident, binary, ["--config", config])
    agent.wait_states({f"http/{incident.backend(name, 'l7')}": "up" for name in UPSTREAM_NAMES})
    return agent


def ended_after(dump, upstream: str, since: float) -> list[dict]:
    return [c for s in dump.streams for c in s.connections_to(upstream) if c["end"] is not None and c["end"] >= since]


def test_the_sole_survivor_is_never_drained_whatever_its_probes_say(incident, reaper_binary):
    agent = started(incident, reaper_binary)
    client = incident.start_client(l4=0, l7=STREAMS)
    incident.wait_flowing(client)
    dead = [name for name in UPSTREAM_NAMES if name != SURVIVOR]
    survivor = incident.backend(SURVIVOR, "l7")

    t_cut, _ = incident.cut_many(dead)
    for name in dead:
        wait_for(lambda name=name: agent.find("backend dead", t_cut, backend=incident.backend(name, "l7")), 5,
                 f"{name} dead")

    def all_on_survivor():
        streams = client.status()["streams"]
        return all(s["age"] is not None and s["age"] < 0.3 and s["backend"] == SURVIVOR for s in streams)
    wait_for(all_on_survivor, 10, "every stream flowing on the survivor", interval=0.1)

    t_slow = incident.set_overloaded(SURVIVOR)      # /readyz answers after 2 s; every stream still flows
    unhealthy = wait_for(lambda: agent.find("backend unhealthy", t_slow, backend=survivor), 3, "survivor unhealthy")[0]
    time.sleep(max(0.0, unhealthy.t + DRAIN + 4.0 - time.monotonic()))

    dump = client.dump()
    metrics = agent.metrics()
    info = f"{agent.log_text(60)}\n{incident.nginx_error_log(15)}"
    assert agent.reaps(survivor) == [], info
    assert metrics.value("conn_reaper_sockets_destroyed_total", pool="http", backend=survivor) == 0, info
    assert ended_after(dump, SURVIVOR, t_slow) == [], info
    assert metrics.value("conn_reaper_reaps_suppressed_total", pool="http", reason="all_backends_down") > 0, info
    for stream in dump.streams:
        gap = stream.longest_gap(t_slow + 0.5, dump.now)
        assert gap < 0.5, f"stream {stream.index} stalled {gap:.3f}s on the survivor\n{info}"
    held = len([s for s in dump.streams if s.backend_at(dump.now) == SURVIVOR])
    print(f"\nsole survivor slow for {dump.now - unhealthy.t:.1f}s past unhealthy (drain_timeout {DRAIN:g}s): "
          f"0 of its {held} streams ended, all flowing")


def test_the_same_slow_upstream_beside_answering_ones_is_drained_after_the_timeout(incident, reaper_binary):
    agent = started(incident, reaper_binary)
    client = incident.start_client(l4=0, l7=STREAMS)
    incident.wait_flowing(client)
    survivor = incident.backend(SURVIVOR, "l7")

    t_slow = incident.set_overloaded(SURVIVOR)
    unhealthy = wait_for(lambda: agent.find("backend unhealthy", t_slow, backend=survivor), 3, "slow one unhealthy")[0]
    drained = wait_for(lambda: [r for r in agent.reaps(survivor) if int(r.fields["sockets"]) > 0], DRAIN + 5,
                       "a drain_timeout reap of the slow upstream")
    info = f"{agent.log_text(60)}\n{incident.nginx_error_log(15)}"
    assert all(r.fields["reason"] == "drain_timeout" for r in agent.reaps(survivor)), info
    first = drained[0].reap_started_at - unhealthy.logged_at
    assert DRAIN - 0.1 <= first <= DRAIN + 1.5, f"first drain {first:.3f}s after unhealthy\n{info}"
    for name in UPSTREAM_NAMES:
        if name != SURVIVOR:
            assert agent.reaps(incident.backend(name, "l7")) == [], info
    print(f"\nslow {SURVIVOR} beside two answering upstreams: first drain close {first:.3f}s after unhealthy")
