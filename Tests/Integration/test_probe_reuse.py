"""`probe.reuse`: http probes on one kept-alive connection per backend, in the seed incident's lab
(lab/incident.py: nginx in front of three upstreams whose /healthz keeps an HTTP/1.1 connection
open). Reuse must not make failure detection slower: a backend that dies silently fails the probe
on its kept connection by the probe's timeout, as nothing answering (its kernel never acknowledges
the request), so it is found dead and reaped as fast as with fresh connections; and a backend that
stops accepting new connections while its kept connection still answers is seen within
`reconnect_every` probes (haproxy#2447).
"""

from __future__ import annotations

import time

from lab.agent import pool_yaml
from lab.incident import L7_PORT, UPSTREAM_NAMES, IncidentLab, assert_reaped, start_agent
from lab.netns import wait_for

STREAMS = 30
INTERVAL, TIMEOUT, FALL = 0.2, 0.15, 2
RECOVERY_BOUND = 0.8          # the incident test's bound, which fresh probes meet
DEAD = "up2"


def probe(reconnect_every: int) -> dict:
    return {"type": "http", "path": "/healthz", "expect_status": [200], "interval": f"{int(INTERVAL * 1000)}ms",
            "timeout": f"{int(TIMEOUT * 1000)}ms", "rise": 2, "fall": FALL, "reuse": True,
            "reconnect_every": reconnect_every}


def start(incident: IncidentLab, reaper_binary: str, reconnect_every: int):
    # Early detection off: the probes alone must find the death in time.
    path = incident.write_file("agent.yaml", pool_yaml(
        [{"name": "http", "backends": incident.all_backends("l7"), "early_detection": False,
          "probe": probe(reconnect_every)}], log_level="debug"))
    agent = start_agent(incident, reaper_binary, ["--config", path])
    agent.wait_states({f"http/{incident.backend(name, 'l7')}": "up" for name in UPSTREAM_NAMES})
    return agent


def probe_connections(incident: IncidentLab, name: str) -> set[int]:
    """Local ports of the connections the nginx namespace opened toward upstream ``name``'s HTTP port
    in the last 10 s or so: conntrack keeps a closed one (CLOSE, TIME_WAIT) for that long."""
    address = incident.address(name)
    return {flow.original.sport for flow in incident.nginx_ns.conntrack_flows("ipv4", "tcp")
            if flow.original.dst == address and flow.original.dport == L7_PORT}


def test_reuse_keeps_one_connection_per_reconnect_every_probes(incident, reaper_binary):
    agent = start(incident, reaper_binary, reconnect_every=10)
    time.sleep(0.5)
    before = probe_connections(incident, "up1")
    probes_before = agent.metrics().value("conn_reaper_probes_total", backend=incident.backend("up1", "l7"))
    time.sleep(4.0)
    opened = probe_connections(incident, "up1") - before
    probes = agent.metrics().value("conn_reaper_probes_total", backend=incident.backend("up1", "l7")) - probes_before
    info = f"{probes} probes, {len(opened)} new connections\n{agent.log_text()}"
    assert probes >= 15, info
    assert agent.metrics().value("conn_reaper_probes_total", result="failure") == 0, info
    # One connection per 10 probes (a connection may straddle the window's start): 2 or 3 for ~20.
    assert 1 <= len(opened) <= probes / 10 + 1, info
    print(f"\nreuse, reconnect_every 10: {probes:.0f} probes on {len(opened)} new connections")


def test_reuse_a_silent_death_fails_the_kept_connection_by_its_timeout(incident, reaper_binary):
    # reconnect_every far above the probes this test makes: the probe that meets the death is on the
    # kept connection.
    agent = start(incident, reaper_binary, reconnect_every=1000)
    client = incident.start_client(l7=STREAMS)

    run = incident.run_incident(client, DEAD, window=2.0, agent=agent)
    backend = incident.backend(DEAD, "l7")
    failed = [line for line in agent.find("probe failed", backend=backend) if line.t >= run.t_cut]
    case = run.case("l7")
    info = (f"{case.summary()}\nreaps after the cut: {[round(t - run.t_cut, 3) for t in run.reap_times]}\n"
            f"{agent.log_text(60)}")

    assert failed, info
    first = failed[0]
    # On the kept connection, the request unacknowledged: nothing answered, exactly as a fresh
    # connect's missing SYN-ACK reads, and within the probe's timeout of the probe's start.
    assert "kept connection" in first.fields.get("probe", ""), info
    assert first.fields["failure"] == "unreachable", info
    assert first.t - run.t_cut <= INTERVAL * 1.1 + TIMEOUT + 0.1, info
    reaps = agent.find("reaped", backend=backend, reason="dead")
    assert len(reaps) == 1, info
    assert_reaped(reaps[0], len(case.on_dead), info)
    slowest = max(case.recovery.values(), key=lambda v: float("inf") if v is None else v)
    assert slowest is not None and slowest <= RECOVERY_BOUND, f"slowest stream flowed again {slowest}s after the cut\n{info}"
    assert run.stalled_at(run.t_end, "l7") == [], info
    for name in UPSTREAM_NAMES:
        if name != DEAD:
            assert agent.reaps(incident.backend(name, "l7")) == [], info
    print(f"\nreuse: first failed probe {first.t - run.t_cut:.3f} s after the cut ({first.fields['probe']}), "
          f"reaped at {reaps[0].t - run.t_cut:.3f} s, slowest stream back at {slowest:.3f} s")


def test_reuse_a_backend_that_stops_accepting_is_seen_within_reconnect_every_probes(incident, reaper_binary):
    every = 5
    agent = start(incident, reaper_binary, reconnect_every=every)
    client = incident.start_client(l7=STREAMS)
    incident.wait_flowing(client)
    backend = incident.backend(DEAD, "l7")
    before = agent.metrics()

    t_drop = time.monotonic()
    incident.drop_new_connections(DEAD)      # SYNs dropped; the kept connection and the streams go on
    # The kept connection serves at most `every` probes in all, then a fresh connect times out.
    bound = every * INTERVAL * 1.1 + TIMEOUT + 0.2
    line = agent.wait_line(lambda l: l.msg == "probe failed" and l.fields.get("backend") == backend, bound + 2, since=t_drop)
    info = agent.log_text(60)
    assert line is not None, f"no failed probe within {bound + 2:.1f} s of the drop\n{info}"
    assert line.t - t_drop <= bound, f"first failure {line.t - t_drop:.3f} s after the drop (bound {bound:.2f})\n{info}"
    assert line.fields["failure"] == "unreachable" and "kept connection" not in line.fields.get("probe", ""), info
    # The backend leaves `up`: unhealthy, since its streams still flow (alive evidence), never reaped.
    agent.wait_states({f"http/{backend}": "unhealthy"}, timeout=(FALL + 1) * INTERVAL * 1.1 + TIMEOUT + 1)
    successes = (agent.metrics().value("conn_reaper_probes_total", backend=backend, result="success")
                 - before.value("conn_reaper_probes_total", backend=backend, result="success"))
    time.sleep(1.0)
    assert agent.reaps(backend) == [], info
    assert all(len(s.connections) == 1 and s.connections[0]["end"] is None for s in client.dump().streams), info
    print(f"\nreuse, reconnect_every {every}: SYNs dropped, {successes:.0f} probes still passed on the kept "
          f"connection, the first failure {line.t - t_drop:.3f} s after the drop (bound {bound:.2f} s)")
