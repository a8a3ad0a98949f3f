"""Unhealthy is not dead: the agent reaps a backend that is gone, not one that is draining, overloaded
or unreachable for new connections while its streams still flow. In the lab of lab/incident.py (real
nginx, three streaming upstreams), with HTTP probes of /readyz at interval 200ms, timeout 150ms,
rise 2, fall 2:

- graceful shutdown (kube-apiserver's: /readyz 503 for a few seconds while every stream keeps flowing,
  then the server ends its streams itself): not one stream is cut; the backend is `unhealthy`, then
  `dead` once its port refuses;
- overload (/readyz answers late) and a listener that drops SYNs: streams flow, nothing is reaped,
  the suppressed reaps are counted (`unhealthy_not_dead`, `alive_evidence`);
- wedged (accepts, never answers): its stalled streams are closed after `drain_timeout`, paced;
- `reap_on: unhealthy` brings back the old behaviour; bad values of the new keys exit 2.

In an emulated VM (`make kernels-ci`) the probe timings, the shutdown delay and the graceful-shutdown
test's waits are times lab.kernel.TIME_SCALE, which the test prints; on a real CPU they are the values above.
"""

from __future__ import annotations

import math
import os
import re
import time

import pytest

from lab import kernel
from lab.agent import Agent, backend_flags, pool_yaml
from lab.analysis import StreamDump, percentile
from lab.incident import L7_PORT, UPSTREAM_NAMES, IncidentLab, assert_reaped, start_agent
from lab.metrics import Metrics
from lab.netns import wait_for

STREAMS = 30
FAST = {"type": "http", "path": "/readyz", "expect_status": [200], "interval": "200ms", "timeout": "150ms",
        "rise": 2, "fall": 2}
FAST_FLAGS = ["--probe", "http", "--path", "/readyz", "--interval", "200ms", "--timeout", "150ms", "--rise", "2",
              "--fall", "2"]
KINDS = (("stream", "l4"), ("http", "l7"))       # pool name, stream kind
SHUTDOWN_DELAY = kernel.scaled(3.0)     # 3 s on a real CPU; with the probes, times TIME_SCALE in a VM
SICK = "up2"
STATES = ("unknown", "up", "unhealthy", "dead")


@pytest.fixture
def incident(build_incident):
    return build_incident(shutdown_delay=SHUTDOWN_DELAY)


def config(incident: IncidentLab, kinds=KINDS, **pool_keys) -> str:
    """The stream pool (L4 backends, probed on the upstreams' HTTP port) and the http pool (L7
    backends), both probing /readyz; ``pool_keys`` (reap_on, drain_timeout) go into each pool."""
    probe = kernel.scaled_probe(FAST)
    pools = {"stream": {"name": "stream", "backends": incident.all_backends("l4"), "probe": {**probe, "port": L7_PORT}},
             "http": {"name": "http", "backends": incident.all_backends("l7"), "probe": probe}}
    return incident.write_file("agent.yaml", pool_yaml([{**pools[pool], **pool_keys} for pool, _ in kinds]))


def started(incident: IncidentLab, binary: str, kinds=KINDS, **pool_keys) -> Agent:
    agent = start_agent(incident, binary, ["--config", config(incident, kinds, **pool_keys)])
    agent.wait_states({f"{pool}/{incident.backend(name, kind)}": "up" for pool, kind in kinds for name in UPSTREAM_NAMES})
    return agent


def gauge_state(metrics: Metrics, pool: str, backend: str) -> str | None:
    """The state ``conn_reaper_backend_state`` says (the one at 1; the others must be 0)."""
    values = {state: metrics.value("conn_reaper_backend_state", pool=pool, backend=backend, state=state)
              for state in STATES if metrics.has("conn_reaper_backend_state", pool=pool, backend=backend, state=state)}
    current = [state for state, value in values.items() if value == 1]
    assert len(current) == 1 and sum(values.values()) == 1, f"{pool}/{backend}: {values}"
    return current[0]


def backend_status(agent: Agent, pool: str, backend: str) -> dict:
    document = agent.status()
    return next(b for p in document["pools"] if p["name"] == pool for b in p["backends"] if b["address"] == backend)


def state_lines(agent: Agent, backend: str, since: float = 0.0) -> list:
    """Every backend state change of ``backend`` (up, unhealthy, dead) logged after ``since``."""
    return [line for line in agent.log() if line.t >= since and line.fields.get("backend") == backend
            and line.msg in ("backend up", "backend unhealthy", "backend dead")]


def suppressed_lines(agent: Agent, pool: str, backend: str) -> list:
    """``reap suppressed`` lines of a backend (the msg may go on after a colon with an explanation)."""
    return [line for line in agent.log() if line.msg.split(":", 1)[0] == "reap suppressed"
            and line.fields.get("pool") == pool and line.fields.get("backend") == backend]


def first_line(agent: Agent, msg: str, timeout: float, since: float = 0.0, **fields):
    return wait_for(lambda: agent.find(msg, since, **fields), timeout,
                    f"{msg!r} with {fields}")[0]


def nginx_held(incident: IncidentLab, name: str, kind: str) -> int:
    """nginx's established sockets toward upstream ``name`` (``kind`` l4|l7), not counting the agent's
    probes, which here connect to the same port as the l7 streams and may wait there (overload).
    nginx's workers run as nobody, the agent as root (``ss -e`` prints no uid for root's sockets);
    ``ss -p`` would tell them apart too, but it reads every process's fds on the machine: seconds
    when another test holds many sockets."""
    address = incident.backend(name, kind)
    result = incident.nginx_ns.run(["ss", "-Htne", "state", "established", "dst", address])
    return sum(1 for line in result.stdout.splitlines() if (m := re.search(r"\buid:(\d+)", line)) and m.group(1) != "0")


def ended_connections(dump: StreamDump, upstream: str) -> list[tuple[str, dict]]:
    """(kind, connection) for every client connection served by ``upstream`` that has ended."""
    return [(s.kind, c) for s in dump.streams for c in s.connections_to(upstream) if c["end"] is not None]


def untouched(dump: StreamDump, upstream_at: float, live: set[str]) -> list[int]:
    """Indexes of the streams that were on a live upstream at ``upstream_at`` and lost their connection."""
    return [s.index for s in dump.streams if s.backend_at(upstream_at) in live and len(s.connections) != 1]


# ---------------------------------------------------------------------------------------------
# Graceful shutdown: unhealthy, never reaped; dead once it refuses


def test_graceful_shutdown_cuts_no_stream_then_the_backend_is_dead(incident, reaper_binary):
    probe, scaled = kernel.scaled_probe(FAST), kernel.scaled
    kernel.announce_scale(f"probes every {probe['interval']}, timeout {probe['timeout']}; shutdown delay "
                          f"{SHUTDOWN_DELAY:g}s, scrape {scaled(1.0):g}s before its end; waits x{kernel.TIME_SCALE:g}")
    agent = started(incident, reaper_binary)
    client = incident.start_client(l4=STREAMS, l7=STREAMS)
    distribution = incident.wait_flowing(client)
    sick = {pool: incident.backend(SICK, kind) for pool, kind in KINDS}

    t_term = incident.terminate_gracefully(SICK)
    unhealthy = {pool: first_line(agent, "backend unhealthy", SHUTDOWN_DELAY, t_term, pool=pool, backend=sick[pool])
                 for pool, _ in KINDS}
    # Late in the delay: nothing was destroyed, nginx still holds every stream.
    time.sleep(max(0.0, t_term + SHUTDOWN_DELAY - scaled(1.0) - time.monotonic()))
    t_scrape = time.monotonic()
    metrics, document = agent.metrics(), agent.status()
    held = {kind: nginx_held(incident, SICK, kind) for _, kind in KINDS}
    t_scraped = time.monotonic()
    ending = incident.wait_upstream_event(SICK, "ending_streams", SHUTDOWN_DELAY + scaled(2))
    exiting = incident.wait_upstream_event(SICK, "exiting", scaled(3))
    assert incident.wait_upstream_exit(SICK, scaled(3)) == 0
    after = incident.wait_flowing(client, timeout=scaled(5), need_all_backends=False)
    agent.wait_states({f"{pool}/{sick[pool]}": "dead" for pool, _ in KINDS}, timeout=scaled(3))
    dump = client.dump()
    info = (f"distribution {distribution}; SIGTERM at 0, ending_streams +{ending - t_term:.3f}s\n"
            f"{agent.log_text(50)}\n{incident.nginx_error_log(10)}")

    assert t_scraped < ending, (f"the scrape (+{t_scrape - t_term:.3f}s to +{t_scraped - t_term:.3f}s) ended after "
                                f"the shutdown delay\n{info}")
    for pool, kind in KINDS:
        backend = sick[pool]
        line = unhealthy[pool]
        assert line.fields.get("failure") == "unhealthy", f"{line.text}\n{info}"
        assert line.t < ending, f"unhealthy only after the streams ended\n{info}"
        # During the delay: unhealthy, not dead, nothing destroyed, every stream still held by nginx.
        assert gauge_state(metrics, pool, backend) == "unhealthy", info
        status = next(b for p in document["pools"] if p["name"] == pool for b in p["backends"]
                      if b["address"] == backend)
        assert status["state"] == "unhealthy" and status["last_failure"] == "unhealthy", f"{status}\n{info}"
        assert status["state_since"], status
        assert metrics.value("conn_reaper_sockets_destroyed_total", pool=pool, backend=backend) == 0, info
        assert metrics.value("conn_reaper_backend_transitions_total", pool=pool, backend=backend, to="unhealthy") == 1
        assert metrics.value("conn_reaper_backend_transitions_total", pool=pool, backend=backend, to="dead") == 0
        assert held[kind] == distribution[kind][SICK], f"nginx held {held[kind]} of {distribution[kind][SICK]}\n{info}"
        assert [r.text for r in agent.reaps(backend) if r.t < ending] == [], f"reaped during the delay\n{info}"
        # Dead only once its port refuses, after the streams ended.
        dead = wait_for(lambda: agent.find("backend dead", pool=pool, backend=backend), scaled(3), "the dead line")
        assert len(dead) == 1 and dead[0].t > ending and dead[0].fields.get("failure") == "refused", info
        # Everything that came from the upstream flowed through the delay and ended cleanly, by the server.
        for stream in dump.of_kind(kind):
            if stream.backend_at(t_term) == SICK:
                gap = stream.longest_gap(t_term, ending)
                kernel.speed_bound(gap, 0.25, f"{kind} stream {stream.index}: longest gap during the delay")
        assert after[kind][SICK] == 0, info
    ended = ended_connections(dump, SICK)
    assert len(ended) >= sum(distribution[kind][SICK] for _, kind in KINDS), info
    early = [(kind, c["end"] - ending, c["why"]) for kind, c in ended if c["end"] < ending]
    assert early == [], f"streams ended before the server ended them: {early}\n{info}"
    aborted = [(kind, c["why"]) for kind, c in ended if not c["clean"]]
    assert aborted == [], f"streams ended without the server's clean end: {aborted}\n{info}"
    assert untouched(dump, t_term, set(UPSTREAM_NAMES) - {SICK}) == [], info
    assert agent.find(level="error") == [], info

    recovery = [s.first_after(ending, exclude=SICK) - ending for s in dump.streams if s.backend_at(t_term) == SICK]
    print(f"\nSIGTERM {SICK}; unhealthy after " + ", ".join(f"{p} {unhealthy[p].t - t_term:.3f}s" for p, _ in KINDS)
          + f"; server ended its {len(ended)} streams at +{ending - t_term:.3f}s, all cleanly; "
          f"flowing elsewhere p50 {percentile(recovery, 0.5):.3f}s max {max(recovery):.3f}s after; dead "
          + ", ".join(f"{p} +{agent.find('backend dead', pool=p)[0].t - exiting:.3f}s" for p, _ in KINDS)
          + " after exit; suppressed unhealthy_not_dead: "
          + ", ".join(f"{p} {metrics.value('conn_reaper_reaps_suppressed_total', pool=p, reason='unhealthy_not_dead'):g}"
                      for p, _ in KINDS))


# ---------------------------------------------------------------------------------------------
# Probes fail, the data path lives: nothing is reaped


def assert_nothing_reaped(agent: Agent, incident: IncidentLab, client, since: float, distribution: dict,
                          reason: str, failure: str) -> str:
    """The common part of the overload and SYN-drop cases, checked at the end of the window."""
    dump = client.dump()
    metrics = agent.metrics()
    info = f"distribution {distribution}\n{agent.log_text(50)}"
    for pool, kind in KINDS:
        backend = incident.backend(SICK, kind)
        lines = state_lines(agent, backend, since)
        assert [l.msg for l in lines] == ["backend unhealthy"], f"{[l.text for l in lines]}\n{info}"
        assert lines[0].fields.get("failure") == failure, f"{lines[0].text}\n{info}"
        assert gauge_state(metrics, pool, backend) == "unhealthy", info
        status = backend_status(agent, pool, backend)
        assert status["state"] == "unhealthy" and status["last_failure"] == failure, f"{status}\n{info}"
        assert metrics.value("conn_reaper_backend_transitions_total", pool=pool, backend=backend, to="dead") == 0, info
        assert metrics.value("conn_reaper_sockets_destroyed_total", pool=pool, backend=backend) == 0, info
        assert agent.reaps(backend) == [], info
        assert metrics.value("conn_reaper_reaps_suppressed_total", pool=pool, reason=reason) > 0, (
            f"{pool}: no suppressed reap counted as {reason}\n{info}")
        suppressed = suppressed_lines(agent, pool, backend)
        assert len(suppressed) == 1 and suppressed[0].fields.get("reason") == reason, (
            f"want one 'reap suppressed' line with reason={reason}: {[l.text for l in suppressed]}\n{info}")
        assert nginx_held(incident, SICK, kind) == distribution[kind][SICK], info
    # Not one stream lost its connection, and every one of them flowed the whole time.
    for stream in dump.streams:
        assert len(stream.connections) == 1 and stream.connections[0]["end"] is None, f"stream {stream.index}\n{info}"
        gap = stream.longest_gap(since, dump.now)
        kernel.speed_bound(gap, 0.25, f"{stream.kind} stream {stream.index}: longest gap")
    assert agent.find(level="error") == [], info
    return ", ".join(f"{p} {metrics.value('conn_reaper_reaps_suppressed_total', pool=p, reason=reason):g}"
                     for p, _ in KINDS)


def test_overloaded_backend_is_unhealthy_and_its_streams_flow(incident, reaper_binary):
    agent = started(incident, reaper_binary)
    client = incident.start_client(l4=STREAMS, l7=STREAMS)
    distribution = incident.wait_flowing(client)

    t_overload = incident.set_overloaded(SICK)     # /readyz answers after 2 s: every probe connects, then times out
    for pool, kind in KINDS:
        first_line(agent, "backend unhealthy", 3, t_overload, pool=pool, backend=incident.backend(SICK, kind))
    time.sleep(max(0.0, t_overload + 10.0 - time.monotonic()))

    counted = assert_nothing_reaped(agent, incident, client, t_overload, distribution, "unhealthy_not_dead", "unhealthy")
    print(f"\noverloaded {SICK} for 10 s: 0 streams cut, suppressed unhealthy_not_dead: {counted}")


def test_new_connections_dropped_while_streams_flow_is_alive_evidence(incident, reaper_binary):
    agent = started(incident, reaper_binary)
    client = incident.start_client(l4=STREAMS, l7=STREAMS)
    distribution = incident.wait_flowing(client)

    t_drop = time.monotonic()
    incident.drop_new_connections(SICK)            # probes time out connecting: unreachable; the streams flow on
    for pool, kind in KINDS:
        first_line(agent, "backend unhealthy", 3, t_drop, pool=pool, backend=incident.backend(SICK, kind))
    time.sleep(max(0.0, t_drop + 5.0 - time.monotonic()))

    counted = assert_nothing_reaped(agent, incident, client, t_drop, distribution, "alive_evidence", "unreachable")
    print(f"\nSYNs to {SICK} dropped for 5 s: 0 streams cut, suppressed alive_evidence: {counted}")


def test_a_backend_that_recovers_before_the_drain_timeout_keeps_every_connection(incident, reaper_binary):
    agent = started(incident, reaper_binary, drain_timeout="3s")
    client = incident.start_client(l4=STREAMS, l7=STREAMS)
    distribution = incident.wait_flowing(client)

    t_overload = incident.set_overloaded(SICK)
    unhealthy = [first_line(agent, "backend unhealthy", 3, t_overload, pool=pool, backend=incident.backend(SICK, kind))
                 for pool, kind in KINDS]
    incident.set_overloaded(SICK, on=False)
    for pool, kind in KINDS:
        first_line(agent, "backend up", 3, t_overload, pool=pool, backend=incident.backend(SICK, kind))
    # Well past the drain timeout counted from `unhealthy`: a timer left running would have closed some.
    time.sleep(max(0.0, max(line.t for line in unhealthy) + 3.0 + 1.5 - time.monotonic()))

    dump = client.dump()
    metrics = agent.metrics()
    info = f"distribution {distribution}\n{agent.log_text(50)}"
    for pool, kind in KINDS:
        backend = incident.backend(SICK, kind)
        assert [l.msg for l in state_lines(agent, backend, t_overload)] == ["backend unhealthy", "backend up"], info
        assert agent.reaps(backend) == [], info
        assert metrics.value("conn_reaper_sockets_destroyed_total", pool=pool, backend=backend) == 0, info
        assert gauge_state(metrics, pool, backend) == "up", info
        assert nginx_held(incident, SICK, kind) == distribution[kind][SICK], info
    for stream in dump.streams:
        assert len(stream.connections) == 1 and stream.connections[0]["end"] is None, f"stream {stream.index}\n{info}"
    print(f"\n{SICK} unhealthy then up again within the 3 s drain timeout: 0 of {sum(distribution[k][SICK] for _, k in KINDS)}"
          f" streams on it closed by {dump.now - t_overload:.1f}s")


# ---------------------------------------------------------------------------------------------
# Wedged: the drain timeout ends what stalls, paced


def test_wedged_backend_streams_are_closed_after_the_drain_timeout_paced(incident, reaper_binary):
    # L7 only: nginx's L4 least_conn sends a stream whose upstream socket was destroyed straight back to
    # the upstream with the fewest connections, the wedged one (it accepts), and nothing marks it
    # failed; L7's proxy_next_upstream does, once a request is cut before its response header.
    kinds = (("http", "l7"),)
    agent = started(incident, reaper_binary, kinds, drain_timeout="2s")
    client = incident.start_client(l4=0, l7=9)
    distribution = incident.wait_flowing(client)
    backend = incident.backend(SICK, "l7")
    live = set(UPSTREAM_NAMES) - {SICK}

    t_wedge = incident.set_wedged(SICK)
    unhealthy = first_line(agent, "backend unhealthy", 3, t_wedge, pool="http", backend=backend)
    n = nginx_held(incident, SICK, "l7")
    budget = math.ceil(n / 10)                    # sockets per second at most

    def all_elsewhere():
        status = client.status()["streams"]
        return all(s["age"] is not None and s["age"] < 0.2 and s["backend"] != SICK for s in status)
    # A stream cut mid-response comes back to the wedged upstream (least_conn: it has the fewest); cut
    # again before its response header, nginx moves it on and marks the upstream failed (per worker).
    # So up to about 2n paced closes, one a second for n < 10.
    try:
        wait_for(all_elsewhere, 2.0 + 2 * n + 4, "every stream to flow on a live upstream", interval=0.1)
    except AssertionError as error:
        raise AssertionError(f"{error}: {client.status()}\n{agent.log_text(60)}\n{incident.nginx_error_log(20)}") from None
    dump = client.dump()
    metrics = agent.metrics()
    drains = agent.find("reaped", pool="http", backend=backend, reason="drain_timeout")
    info = f"distribution {distribution}, n={n}\n{agent.log_text(60)}\n{incident.nginx_error_log(15)}"

    assert unhealthy.fields.get("failure") == "unhealthy", f"{unhealthy.text}\n{info}"
    assert n == distribution["l7"][SICK] >= 1, info
    assert [r.fields.get("reason") for r in agent.reaps(backend)] == ["drain_timeout"] * len(drains), info
    active = [r for r in drains if int(r.fields["sockets"]) > 0]
    assert active, info
    # Not before the drain timeout; about at it.
    first = active[0].reap_started_at - unhealthy.logged_at
    assert 2.0 - 0.1 <= first <= 2.0 + 1.2, f"first drain reap {first:.3f}s after unhealthy\n{info}"
    closed = sorted(c["end"] for _, c in ended_connections(dump, SICK))
    assert closed and closed[0] - unhealthy.t >= 2.0 - 0.1, (
        f"a stream on {SICK} ended {closed[0] - unhealthy.t:.3f}s after unhealthy\n{info}")
    # Paced: never more than a tenth of them (at least one) per second.
    for line in active:
        window = [r for r in active if 0 <= r.reap_started_at - line.reap_started_at < 0.95]
        total = sum(int(r.fields["sockets"]) for r in window)
        assert total <= budget, f"{total} sockets within 1 s from {line.text} (budget {budget})\n{info}"
        assert int(line.fields["errors"]) == 0, info
    destroyed = sum(int(r.fields["sockets"]) for r in active)
    assert destroyed >= n, info
    # Each of them was one of nginx's (nginx logs every upstream socket ended under it), none the
    # agent's own probe, which toward a wedged backend waits connected for its whole timeout.
    aborts = [line for line in incident.nginx_error_log(last=100000).splitlines()
              if "(103: Software caused connection abort)" in line and backend in line]
    assert len(aborts) == destroyed, f"{destroyed} sockets destroyed, nginx saw {len(aborts)} of its own end\n{info}"
    assert metrics.value("conn_reaper_sockets_destroyed_total", pool="http", backend=backend) >= n, info
    # Every stream that stalled on it was ended by the agent, not by the server (a wedged one ends nothing).
    assert all(not c["clean"] for _, c in ended_connections(dump, SICK)), info
    # Unhealthy all along, never dead; the live upstreams untouched.
    assert [l.msg for l in state_lines(agent, backend, t_wedge)] == ["backend unhealthy"], info
    assert gauge_state(metrics, "http", backend) == "unhealthy", info
    assert untouched(dump, t_wedge, live) == [], info
    for name in live:
        assert agent.reaps(incident.backend(name, "l7")) == [], info
        assert metrics.value("conn_reaper_sockets_destroyed_total", backend=incident.backend(name, "l7")) == 0, info
    print(f"\nwedged {SICK}: {n} streams, first closed {first:.3f}s after unhealthy, "
          f"{len(active)} drain reaps of {[int(r.fields['sockets']) for r in active]} sockets at "
          f"{[round(r.reap_started_at - unhealthy.logged_at, 2) for r in active]} s; all flowing elsewhere "
          f"{dump.now - unhealthy.t:.2f}s after unhealthy")


# A drain pass slower than its pace: one out at a time, and it stops once the backend is well again

DRAIN_PAUSE = 3.0


def slow_drain_agent(incident: IncidentLab, binary: str) -> Agent:
    """The http pool with drain_timeout 1s; every reap pass waits DRAIN_PAUSE seconds before it works
    in the agent's namespace (the failpoint a kernel test sets: a pass over a large table)."""
    env = {**os.environ, "CONN_REAPER_FAILPOINT_SLOW_NETNS": f"={int(DRAIN_PAUSE * 1000)}"}
    agent = Agent(incident.nginx_ns, binary, ["--config", config(incident, (("http", "l7"),), drain_timeout="1s")], env=env)
    incident.agents.append(agent)
    agent.wait_ready()
    agent.wait_states({f"http/{incident.backend(name, 'l7')}": "up" for name in UPSTREAM_NAMES})
    return agent


def wedged_behind_a_slow_drain(incident: IncidentLab, binary: str):
    """9 L7 streams flowing, then SICK wedged; returns the agent, the client, the streams' spread,
    SICK's address and its `backend unhealthy` line."""
    agent = slow_drain_agent(incident, binary)
    client = incident.start_client(l4=0, l7=9)
    distribution = incident.wait_flowing(client)
    backend = incident.backend(SICK, "l7")
    t_wedge = incident.set_wedged(SICK)
    unhealthy = first_line(agent, "backend unhealthy", 3, t_wedge, pool="http", backend=backend)
    return agent, client, distribution, backend, unhealthy


def test_a_slow_drain_pass_stops_once_the_backend_is_well_again(incident, reaper_binary):
    """SICK is wedged past its 1 s drain timeout; its first drain pass waits 3 s before it works, and
    SICK is unwedged meanwhile and answers (up). Asked again when its pause ends, the pass stops
    (`pass stopped`), and no further pass comes: every stream that stalled on SICK flows again on its
    first connection, nothing closed. (The other way: the next test.)"""
    agent, client, distribution, backend, unhealthy = wedged_behind_a_slow_drain(incident, reaper_binary)
    # The pass is decided at the drain timeout (after a count), then waits 3 s: unwedged inside that.
    time.sleep(max(0.0, unhealthy.t + 1.8 - time.monotonic()))
    incident.set_wedged(SICK, on=False)
    t_up = first_line(agent, "backend up", 3, unhealthy.t, pool="http", backend=backend).t
    stopped = agent.wait_line(lambda l: l.msg.startswith("pass stopped") and l.fields.get("backend") == backend,
                              DRAIN_PAUSE + 2, since=unhealthy.t)
    time.sleep(2.0)  # two drain paces and more: nothing else comes
    incident.wait_flowing(client, timeout=5)
    dump = client.dump()
    info = f"distribution {distribution}\n{agent.log_text(60)}"
    assert stopped and stopped.fields.get("reason") == "drain_timeout", info
    assert t_up < stopped.t, f"up {t_up - unhealthy.t:.2f}s, stopped {stopped.t - unhealthy.t:.2f}s after unhealthy\n{info}"
    assert [r for r in agent.reaps(backend) if int(r.fields["sockets"]) > 0] == [], info
    assert agent.metrics().value("conn_reaper_sockets_destroyed_total", pool="http", backend=backend) == 0, info
    assert all(len(s.connections) == 1 for s in dump.streams), info
    assert nginx_held(incident, SICK, "l7") == distribution["l7"][SICK] >= 1, info
    print(f"\nslow drain pass: {SICK} up {t_up - unhealthy.t:.2f}s after unhealthy, the pass stopped "
          f"{stopped.t - unhealthy.t:.2f}s after it; 0 of {distribution['l7'][SICK]} stalled streams closed")


def test_a_slow_drain_pass_toward_a_backend_still_wedged_goes_on_one_at_a_time(incident, reaper_binary):
    """The other way: SICK stays wedged. Each drain pass goes on after its 3 s pause and closes at
    the pace (at least one); the passes never overlap: each starts once the one before came back, so
    their `reaped` lines are at least the pause apart, not a second (the pace) apart."""
    agent, client, distribution, backend, unhealthy = wedged_behind_a_slow_drain(incident, reaper_binary)
    wait_for(lambda: len([r for r in agent.reaps(backend) if int(r.fields["sockets"]) > 0]) >= 2,
             1.0 + 3 * DRAIN_PAUSE + 3, "two drain passes that closed connections")
    info = f"distribution {distribution}\n{agent.log_text(60)}"
    closing = [r for r in agent.reaps(backend) if int(r.fields["sockets"]) > 0]
    assert {r.fields.get("reason") for r in closing} == {"drain_timeout"}, info
    first = closing[0].t - unhealthy.t
    assert first >= 1.0 + DRAIN_PAUSE - 0.2, f"first drain close {first:.2f}s after unhealthy\n{info}"
    gaps = [b.t - a.t for a, b in zip(closing, closing[1:])]
    assert all(gap >= DRAIN_PAUSE - 0.2 for gap in gaps), f"passes {gaps} s apart\n{info}"
    assert not [l for l in agent.log() if l.msg.startswith("pass stopped")], info
    incident.set_wedged(SICK, on=False)
    print(f"\nslow drain pass toward a wedged {SICK}: first close {first:.2f}s after unhealthy, "
          f"passes {[round(g, 2) for g in gaps]} s apart")


# ---------------------------------------------------------------------------------------------
# reap_on: unhealthy, the old behaviour


def test_reap_on_unhealthy_reaps_a_graceful_shutdown_at_once(incident, reaper_binary):
    agent = started(incident, reaper_binary, reap_on="unhealthy")
    assert [pool["reap_on"] for pool in agent.status()["pools"]] == ["unhealthy", "unhealthy"]
    client = incident.start_client(l4=12, l7=12)
    distribution = incident.wait_flowing(client)

    t_term = incident.terminate_gracefully(SICK)
    firsts = {pool: first_line(agent, "reaped", SHUTDOWN_DELAY, t_term, pool=pool,
                               backend=incident.backend(SICK, kind)) for pool, kind in KINDS}
    ending = incident.wait_upstream_event(SICK, "ending_streams", SHUTDOWN_DELAY + 2)
    assert incident.wait_upstream_exit(SICK, 5) == 0
    incident.wait_flowing(client, timeout=5, need_all_backends=False)
    dump = client.dump()
    info = f"distribution {distribution}\n{agent.log_text(60)}"

    for pool, kind in KINDS:
        backend = incident.backend(SICK, kind)
        first = firsts[pool]
        assert first.fields.get("reason") == "unhealthy", f"{first.text}\n{info}"
        assert first.t < ending, f"first reap {first.t - t_term:.3f}s after SIGTERM, after the drain\n{info}"
        kernel.speed_bound(first.t - t_term, 1.5, f"{pool}: first reap after SIGTERM")
        assert_reaped(first, distribution[kind][SICK], info)
        during = [r.fields.get("reason") for r in agent.reaps(backend) if r.t < ending]
        assert set(during) == {"unhealthy"}, info
        unhealthy = agent.find("backend unhealthy", pool=pool, backend=backend)
        assert unhealthy and unhealthy[0].fields.get("failure") == "unhealthy", info
        # The streams that were on it were cut, before the server could end them.
        for stream in dump.of_kind(kind):
            if stream.backend_at(t_term) == SICK:
                connection = next(c for c in stream.connections if c["start"] <= t_term and c["data"])
                assert connection["end"] is not None and connection["end"] < ending, info
                assert not connection["clean"], info
    assert untouched(dump, t_term, set(UPSTREAM_NAMES) - {SICK}) == [], info
    connections = sum(len(s.connections_started_between(t_term, ending)) for s in dump.streams)
    print("\nreap_on: unhealthy: first reaps " + ", ".join(f"{p} +{firsts[p].t - t_term:.3f}s "
                                                      f"({firsts[p].fields['sockets']} sockets)" for p, _ in KINDS)
          + f" after SIGTERM; {connections} new client connections during the {SHUTDOWN_DELAY:g}s delay")


# ---------------------------------------------------------------------------------------------
# Bad values of the new keys


def test_bad_reap_on_or_drain_timeout_in_yaml_exits_2_naming_the_key(incident, reaper_binary):
    client = incident.start_client(l4=6, l7=6)
    distribution = incident.wait_flowing(client)
    good = {"name": "apiserver", "backends": incident.all_backends("l7"), "probe": FAST}
    cases = [("pools[0].reap_on", {"reap_on": "sometimes"}), ("pools[0].reap_on", {"reap_on": 1}),
             ("pools[0].drain_timeout", {"drain_timeout": "-5s"}), ("pools[0].drain_timeout", {"drain_timeout": "soon"})]
    for key, extra in cases:
        path = incident.write_file("bad.yaml", pool_yaml([{**good, **extra}]))
        result = incident.nginx_ns.run([reaper_binary, "run", "--config", path], check=False, timeout=20)
        assert result.returncode == 2, f"{extra}: exit {result.returncode}\n{result.stderr}"
        assert key in result.stderr, f"{extra}: {key} not named:\n{result.stderr}"
    assert_streams_untouched(incident, client, distribution)


def test_bad_reap_on_or_drain_timeout_flags_exit_2_naming_the_flag(incident, reaper_binary):
    client = incident.start_client(l4=6, l7=6)
    distribution = incident.wait_flowing(client)
    base = [reaper_binary, "run", *backend_flags(incident.all_backends("l7")), *FAST_FLAGS]
    for flags, key in ((["--reap-on", "sometimes"], "--reap-on"), (["--drain-timeout=-1s"], "--drain-timeout"),
                       (["--drain-timeout", "soon"], "--drain-timeout")):
        result = incident.nginx_ns.run([*base, *flags], check=False, timeout=20)
        assert result.returncode == 2 and key in result.stderr, f"{flags}: exit {result.returncode}\n{result.stderr}"
    # The good values are accepted: 0 means never.
    agent = start_agent(incident, reaper_binary, [*backend_flags(incident.all_backends("l7")), *FAST_FLAGS,
                                                  "--reap-on", "dead", "--drain-timeout", "0"])
    agent.wait_states({f"default/{b}": "up" for b in incident.all_backends("l7")})
    assert agent.stop() == 0, agent.log_text()
    assert_streams_untouched(incident, client, distribution)


def assert_streams_untouched(incident: IncidentLab, client, distribution: dict) -> None:
    assert all(len(s.connections) == 1 for s in client.dump().streams)
    assert incident.wait_flowing(client, need_all_backends=False)
    for kind in ("l4", "l7"):
        assert sum(nginx_held(incident, n, kind) for n in UPSTREAM_NAMES) == sum(distribution[kind].values())
