"""Early detection in the seed incident's lab, with nginx reaching its upstreams through a switch (a
bridge in a namespace of its own), so a dead upstream's link going down leaves nginx's own link up.

Probes run at interval 2s, timeout 1s, fall 3: probing alone needs about 6 s to call a backend dead.
When the streams carry data toward the upstream (a line every 200 ms), nginx's connections to the
dead one retransmit after one RTO while those to the others are acknowledged: the agent probes it at
once and it is dead, by the same rule as always, within a second. With idle connections there is no
such signal and recovery takes what probing takes; with every upstream alive and busy, nothing
triggers an early probe."""

from __future__ import annotations

import time

import pytest

from lab import kernel
from lab.agent import Agent, pool_yaml
from lab.incident import UPSTREAM_NAMES, IncidentLab, start_agent

STREAMS = 30
DEAD = "up2"
SLOW_PROBES = {"type": "tcp", "interval": "2s", "timeout": "1s", "rise": 2, "fall": 3}
SENTINEL_REFRESH = 5.0    # WorkerReapKernel.sentinelRefresh
EARLY_BOUND = 1.5          # every stalled stream flows again within this of the cut (min_outage 1 s + a pass)
MIN_OUTAGE = 1.0           # the pool's default: a shorter silence ends nothing
PROBING_ALONE = 2.0 * 3 + 1.0 + 2.0   # interval x fall, a timeout, and a pass and a reconnect


@pytest.fixture
def incident(build_incident):
    return build_incident(switch=True)


def agent_for(incident: IncidentLab, binary: str, **pool) -> Agent:
    config = incident.write_file("agent.yaml", pool_yaml([{
        "name": "stream", "backends": incident.all_backends("l4"), "probe": SLOW_PROBES, **pool}]))
    agent = start_agent(incident, binary, ["--config", config])
    agent.wait_states({f"stream/{incident.backend(name)}": "up" for name in UPSTREAM_NAMES}, timeout=15)
    return agent


def describe(run, agent: Agent, incident: IncidentLab) -> str:
    return (f"distribution {run.distribution}\nl4 {run.case('l4').summary()}\n{agent.log_text(40)}\n"
            f"{incident.nginx_error_log(10)}")


def test_streams_that_carry_data_flow_again_within_a_second_of_a_silent_death(incident, reaper_binary):
    agent = agent_for(incident, reaper_binary)
    client = incident.start_client(l4=STREAMS, send_every=0.2)
    # The watch looks up a few connections per backend, picked by a dump every 5 s: like a node's
    # real connections, these exist for a while before the death.
    run = incident.run_incident(client, DEAD, window=3.0, agent=agent, settle=SENTINEL_REFRESH + 1.0)
    info = describe(run, agent, incident)
    case = run.case("l4")
    assert case.on_dead, info
    recoveries = case.stalled_recoveries
    assert all(r is not None for r in recoveries), info
    dead = incident.backend(DEAD)
    timeline = {line.msg: round(line.t - run.t_cut, 3) for line in reversed(agent.log())
                if line.fields.get("backend") == dead and line.t >= run.t_cut}
    print(f"\ntimeline after the cut (s, when read): {timeline}")
    print(f"early detection: {len(recoveries)} stalled streams flowed again after p50 "
          f"{sorted(recoveries)[len(recoveries) // 2]:.3f} s, max {max(recoveries):.3f} s (probing alone: ~6 s)")
    assert max(recoveries) <= EARLY_BOUND, f"slowest stalled stream flowed again after {max(recoveries):.3f} s\n{info}"

    dead = incident.backend(DEAD)
    signal = agent.find("early signal: probing the backend at once", backend=dead)
    assert len(signal) == 1 and signal[0].fields["signal"] == "retransmits", info
    reap = agent.find("reaped", backend=dead, reason="dead")
    assert len(reap) == 1, info
    assert reap[0].fields["detected_by"] == "retransmits" and 0 < int(reap[0].fields["after_signal_ms"]), reap[0].text
    kernel.speed_bound(int(reap[0].fields["after_signal_ms"]), 1500, "reap after the early signal", "ms")
    metrics = agent.metrics()
    # fall probes at once, and one more half a second on only when the first verdict came too soon.
    assert 3 <= metrics.value("conn_reaper_early_probes_total", backend=dead, signal="retransmits") <= 4, info
    for name in UPSTREAM_NAMES:
        if name != DEAD:
            live = incident.backend(name)
            assert agent.reaps(live) == [] and metrics.value("conn_reaper_early_probes_total", backend=live) == 0, info


@pytest.mark.parametrize("outage", [0.3, 0.8, 1.6])
def test_a_live_backends_short_outage_costs_at_most_its_streams_and_never_its_reconnects(incident, reaper_binary, outage):
    """The living side: an outage shorter than min_outage (1 s) ends nothing, however early detection
    suspects it (0.3 s and 0.8 s here: a bond failover, a paused VM); one of 1.6 s looks
    like a death once a second of silence has passed (its streams may be ended: the price of the
    1.5 s bound), but once it answers again, within one return probe, nginx's reconnects to it are
    left alone."""
    agent = agent_for(incident, reaper_binary)
    client = incident.start_client(l4=STREAMS, send_every=0.2)
    incident.wait_flowing(client)
    time.sleep(SENTINEL_REFRESH + 1.0)
    target = incident.backend(DEAD)
    start, end = incident.blackout(DEAD, outage)
    time.sleep(4.0)
    info = f"{agent.log_text(40)}\n{incident.nginx_error_log(10)}"
    reaps = agent.reaps(target, since=start)
    ended = [int(line.fields["sockets"]) for line in reaps]
    print(f"\n{outage} s outage: reaps {[(line.fields['reason'], line.fields['sockets'], round(line.t - start, 3)) for line in reaps]}")
    for name in UPSTREAM_NAMES:
        if name != DEAD:
            assert agent.reaps(incident.backend(name)) == [], info
    if outage < MIN_OUTAGE:
        assert ended == [], info
    else:
        answered = agent.wait_line(lambda line: line.msg.startswith("answers again after an early dead verdict")
                                   and line.fields.get("backend") == target, timeout=1.0, since=start)
        dead = agent.find("reaped", backend=target, reason="dead", since=start)
        if dead:
            assert answered is not None, f"found dead early, never seen answering again\n{info}"
            # Probed at the verdict, then every 100 ms: seen answering within one return probe of
            # the later of the verdict and the outage's end (plus what reading the log takes).
            bound = max(dead[0].t, end) + 0.1 + 0.1
            assert answered.t <= bound, f"answered again {answered.t - end:.3f} s after the outage\n{info}"
            late = [line for line in reaps if line.t > answered.t + 0.05]
            assert late == [], f"reaped after it answered again: {[line.text for line in late]}"
            # Reconnects ended while it was already back but not yet seen answering: nginx reconnects
            # about once a millisecond, so at most a return probe's period of them.
            back = sum(int(line.fields["sockets"]) for line in reaps if line.fields["reason"] == "still-dead" and line.t > end)
            print(f"reconnects ended after the outage's end, before it was seen answering: {back}")
            assert back <= 150, info
        assert sum(ended) <= STREAMS, info
    # Everything flows again, the outage's backend included.
    streams = client.status()["streams"]
    assert streams and all(s["age"] is not None for s in streams), streams
    kernel.speed_bound(max(s["age"] for s in streams), 0.5, "oldest stream's last data after the outage")
    if not agent.find("reaped", backend=target, reason="dead", since=start):
        assert agent.backend_states()[f"stream/{target}"] == "up", agent.backend_states()


def test_idle_connections_recover_as_probing_alone_does_and_no_live_backend_is_reaped(incident, reaper_binary):
    agent = agent_for(incident, reaper_binary)
    client = incident.start_client(l4=STREAMS)        # the upstreams talk; nginx sends them nothing
    run = incident.run_incident(client, DEAD, window=PROBING_ALONE + 1.0, agent=agent)
    info = describe(run, agent, incident)
    recoveries = run.case("l4").stalled_recoveries
    assert recoveries and all(r is not None and r <= PROBING_ALONE for r in recoveries), info
    print(f"\nidle: stalled streams flowed again after max {max(recoveries):.3f} s (probing alone: <= {PROBING_ALONE} s)")
    reap = agent.find("reaped", backend=incident.backend(DEAD), reason="dead")
    assert len(reap) == 1 and reap[0].fields["detected_by"] == "probes", info
    for name in UPSTREAM_NAMES:
        if name != DEAD:
            assert agent.reaps(incident.backend(name)) == [], info


def test_busy_live_backends_never_trigger_an_early_probe(incident, reaper_binary):
    agent = agent_for(incident, reaper_binary)
    client = incident.start_client(l4=STREAMS, send_every=0.2)
    incident.wait_flowing(client)
    started = time.monotonic()
    time.sleep(60.0)
    metrics = agent.metrics()
    assert metrics.value("conn_reaper_early_probes_total") == 0, agent.log_text()
    assert agent.find("early signal: probing the backend at once", since=started) == [], agent.log_text()
    assert agent.reaps() == [] and set(agent.backend_states().values()) == {"up"}
    streams = client.status()["streams"]
    assert streams and all(s["age"] is not None for s in streams), streams
    kernel.speed_bound(max(s["age"] for s in streams), 0.3, "oldest stream's last data, no early probe")


def test_early_detection_can_be_turned_off(incident, reaper_binary):
    agent = agent_for(incident, reaper_binary, early_detection=False)
    client = incident.start_client(l4=STREAMS, send_every=0.2)
    run = incident.run_incident(client, DEAD, window=3.0, agent=agent)
    assert agent.find("early signal: probing the backend at once") == [], describe(run, agent, incident)
    assert agent.metrics().value("conn_reaper_early_probes_total") == 0


def test_carrier_loss_on_the_only_interface_toward_a_backend_is_a_signal(build_incident, reaper_binary):
    # Without the switch nginx reaches each upstream over a veth of its own: the dead upstream's end
    # going down takes nginx's end's carrier with it. Idle streams: no retransmission to see.
    incident = build_incident()
    agent = agent_for(incident, reaper_binary)
    client = incident.start_client(l4=STREAMS)
    run = incident.run_incident(client, DEAD, window=2.0, agent=agent)
    info = describe(run, agent, incident)
    recoveries = run.case("l4").stalled_recoveries
    assert recoveries and all(r is not None for r in recoveries), info
    print(f"\ncarrier: stalled streams flowed again after max {max(recoveries):.3f} s (probing alone: ~6 s)")
    assert max(recoveries) <= EARLY_BOUND, info
    signal = agent.find("early signal: probing the backend at once", backend=incident.backend(DEAD))
    assert [line.fields["signal"] for line in signal] == ["carrier"], info
    assert "to-up2 lost its carrier" in signal[0].fields["detail"], signal[0].text
    reap = agent.find("reaped", backend=incident.backend(DEAD), reason="dead")
    assert len(reap) == 1 and reap[0].fields["detected_by"] == "carrier", info
    for name in UPSTREAM_NAMES:
        if name != DEAD:
            assert agent.reaps(incident.backend(name)) == [], info


def test_a_failed_neighbour_entry_is_a_signal(incident, reaper_binary):
    # The kernel's defaults take 5-8 s to fail an entry (delay_first_probe_time 5 s, 3 probes 1 s
    # apart); these timers, set in nginx's namespace only, make it about a second.
    for name, value in (("base_reachable_time_ms", "500"), ("delay_first_probe_time", "1"),
                        ("retrans_time_ms", "100"), ("ucast_solicit", "2"), ("mcast_solicit", "1")):
        incident.nginx_ns.run(["sysctl", "-qw", f"net.ipv4.neigh.to-sw.{name}={value}"])
    agent = agent_for(incident, reaper_binary)
    client = incident.start_client(l4=STREAMS)      # idle toward the upstreams: no retransmissions
    run = incident.run_incident(client, DEAD, window=PROBING_ALONE, agent=agent)
    info = describe(run, agent, incident)
    recoveries = run.case("l4").stalled_recoveries
    assert recoveries and all(r is not None for r in recoveries), info
    signal = agent.find("early signal: probing the backend at once", backend=incident.backend(DEAD))
    assert signal and signal[0].fields["signal"] == "neighbour", info
    print(f"\nneighbour: signal {signal[0].t - run.t_cut:.3f} s after the cut; stalled streams flowed again after "
          f"max {max(recoveries):.3f} s (probing alone: ~6 s)")
    kernel.speed_bound(max(recoveries), 6.0, "stalled streams flowing again after a neighbour signal (worst)")
    reap = agent.find("reaped", backend=incident.backend(DEAD), reason="dead")
    assert len(reap) == 1 and reap[0].fields["detected_by"] == "neighbour", info


@pytest.mark.parametrize("outage", [0.5, 0.9])
def test_watches_of_a_live_backend_whose_link_flaps_shorter_than_min_outage_are_kept(build_incident, reaper_binary, outage):
    """The traffic users have: watches, where the upstream writes and the client never does (nginx's
    upstream sockets only acknowledge). The upstream's link goes down for ``outage`` s and comes back
    (a bond or switch failover): the carrier signal probes it at once and its probes fail, but the
    silence is shorter than min_outage (1 s). Nothing is ended: every stream keeps its one
    connection and flows again on it."""
    incident = build_incident()
    agent = agent_for(incident, reaper_binary)
    client = incident.start_client(l4=STREAMS)          # watches: nothing sent toward the upstreams
    incident.wait_flowing(client)
    before = [s["connections"] for s in client.status()["streams"]]
    target = incident.backend(DEAD)
    start, _ = incident.cut(DEAD)
    time.sleep(max(0.0, start + outage - time.monotonic()))
    incident.restore(DEAD)
    end = time.monotonic()
    time.sleep(4.0)
    info = f"{agent.log_text(40)}\n{incident.nginx_error_log(10)}"
    signal = agent.find("early signal: probing the backend at once", backend=target, since=start)
    assert [line.fields["signal"] for line in signal][:1] == ["carrier"], f"the flap was never seen early\n{info}"
    assert agent.reaps(since=start) == [], info
    streams = client.status()["streams"]
    after = [s["connections"] for s in streams]
    assert after == before, f"streams reconnected: {before} -> {after}\n{info}"
    kernel.speed_bound(max(s["age"] for s in streams), 0.5, "oldest stream's last line after the flap")
    held = agent.metrics().value("conn_reaper_reaps_suppressed_total", pool="stream", reason="short_outage")
    print(f"\nwatches, link down {outage} s (restored after {end - start:.3f} s): 0 ended, "
          f"{len(before)} streams on their own connections, short_outage held {held:g} time(s)")
