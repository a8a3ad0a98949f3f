"""The seed incident end to end: real nginx (kubespray's L4 stream balancer and incident 1's L7 proxy)
in front of three streaming upstreams, 30 long-lived streams of each kind through it, one upstream's
link set down (it can send nothing: no FIN, no RST). See lab/incident.py for the topology.

With conn-reaper at interval 200ms, timeout 150ms, fall 2, every stalled stream flows again within
0.8 s of the cut; without it they are still stalled after 10 s. A flapping backend is never reaped,
nothing is reaped when every backend fails at once, and reaping stops once a backend is back.

In an emulated VM (`make kernels-ci`) the incident test runs with its probe timings, its window and its
recovery bound times lab.kernel.TIME_SCALE, which it prints; on a real CPU they are the values above.
"""

from __future__ import annotations

import signal
import time

from lab import kernel
from lab.agent import Agent, backend_flags, pool_yaml
from lab.analysis import IncidentRun
from lab.incident import (L4_PORT, NGINX_HTTP_UPSTREAM, NGINX_STREAM_UPSTREAM, UPSTREAM_NAMES, IncidentLab, assert_reaped,
                          start_agent)
from lab.netns import wait_for

STREAMS = 30
RECOVERY_BOUND = 0.8          # seconds from the cut to the last stalled stream flowing again
WITHOUT_AGENT_WINDOW = 10.0   # seconds the streams must still be stalled without the agent
FAST = {"type": "tcp", "interval": "200ms", "timeout": "150ms", "rise": 2, "fall": 2}
FAST_FLAGS = ["--probe", "tcp", "--interval", "200ms", "--timeout", "150ms", "--rise", "2", "--fall", "2"]
DEAD = "up2"




def two_pool_config(incident: IncidentLab, **top) -> str:
    """Pools for nginx's stream upstream (TCP probes) and http upstream (HTTP probes of /healthz), probe
    timings times lab.kernel.TIME_SCALE (FAST's own on a real CPU)."""
    probe = kernel.scaled_probe(FAST)
    return incident.write_file("agent.yaml", pool_yaml([
        {"name": "stream", "backends": incident.all_backends("l4"), "probe": probe},
        {"name": "http", "backends": incident.all_backends("l7"),
         "probe": {**probe, "type": "http", "path": "/healthz", "expect_status": [200]}},
    ], **top))


def all_up(agent: Agent, incident: IncidentLab, pools=(("stream", "l4"), ("http", "l7"))) -> dict:
    return agent.wait_states({f"{pool}/{incident.backend(name, kind)}": "up"
                              for pool, kind in pools for name in UPSTREAM_NAMES})


def describe(run: IncidentRun, agent: Agent | None, incident: IncidentLab) -> str:
    text = [f"distribution at the cut: {run.distribution}"]
    for kind in ("l4", "l7"):
        if run.dump.of_kind(kind):
            text.append(f"{kind}: {run.case(kind).summary()}")
    if agent is not None:
        text.append("reaps after the cut (s): " + str([round(t - run.t_cut, 3) for t in run.reap_times]))
        text.append(agent.log_text(40))
    text.append(incident.nginx_error_log(15))
    return "\n".join(text)


# ---------------------------------------------------------------------------------------------
# The incident


def test_with_agent_every_stalled_stream_flows_again_within_0_8s(incident, reaper_binary):
    probe, window = kernel.scaled_probe(FAST), kernel.scaled(2.0)
    kernel.announce_scale(f"probes every {probe['interval']}, timeout {probe['timeout']}; window {window:g}s; "
                          f"recovery bound {kernel.scaled(RECOVERY_BOUND):g}s")
    agent = start_agent(incident, reaper_binary, ["--config", two_pool_config(incident)])
    all_up(agent, incident)
    client = incident.start_client(l4=STREAMS, l7=STREAMS)

    run = incident.run_incident(client, DEAD, window=window, agent=agent)
    info = describe(run, agent, incident)

    for kind in ("l4", "l7"):
        case = run.case(kind)
        assert len(case.streams) == STREAMS, info
        # least_conn spread the streams; the ones on the dead upstream are the ones that stalled.
        assert all(run.distribution[kind][name] >= 1 for name in UPSTREAM_NAMES), info
        assert len(case.on_dead) == run.distribution[kind][DEAD], info
        for stream in case.streams:
            gap = stream.longest_gap(run.t_cut, run.t_end)
            if stream in case.on_dead:
                # Three of its upstream's line intervals (50 ms): early detection (the carrier of nginx's
                # veth to the dead upstream) can make the whole stall as short as 0.2 s.
                assert gap > 0.15, f"{kind} stream {stream.index} on {DEAD} never stalled ({gap:.3f}s)\n{info}"
            else:
                kernel.speed_bound(gap, 0.25, f"{kind} stream {stream.index} on a live upstream: longest gap")
                assert not stream.ended_between(run.t_cut, run.t_end), f"live {kind} stream was cut\n{info}"
        # Every stream (stalled or not) has data from a live upstream within the bound.
        slowest = max(case.recovery.values(), key=lambda v: float("inf") if v is None else v)
        assert slowest is not None, f"{kind}: a stream never flowed again after the cut\n{info}"
        # The bound follows from the probe timings (fall 2 at 200 ms, 150 ms timeout): scaled with them.
        kernel.scaled_bound(slowest, RECOVERY_BOUND + 1e-9, f"{kind}: slowest stream flowing again after the cut")
        # At the end every stream flows, none from the dead upstream.
        assert run.stalled_at(run.t_end, kind) == [], info
        assert all(s.lines_between(run.t_end - 0.5, run.t_end, DEAD) == 0 for s in case.streams), info

        dead_backend = incident.backend(DEAD, kind)
        pool = "stream" if kind == "l4" else "http"
        down_reaps = agent.find("reaped", backend=dead_backend, reason="dead", pool=pool)
        assert len(down_reaps) == 1, info
        assert_reaped(down_reaps[0], len(case.on_dead), info)
        # nginx's next pick after the reap is the dead upstream again (least_conn: it now has the
        # fewest connections); the still-dead reaps abort those connects (SYN_SENT) and nginx moves on.
        aborted = [line for line in incident.nginx_error_log(last=100000).splitlines()
                   if "connect() failed (103: Software caused connection abort)" in line and dead_backend in line]
        assert aborted, f"nginx saw no aborted connect toward {dead_backend}\n{info}"
        metrics = agent.metrics()
        assert metrics.value("conn_reaper_sockets_destroyed_total", pool=pool, backend=dead_backend) >= len(case.on_dead)
        assert metrics.value("conn_reaper_conntrack_entries_deleted_total", pool=pool, backend=dead_backend) >= 1
        assert metrics.value("conn_reaper_backend_transitions_total", pool=pool, backend=dead_backend, to="dead") == 1
        assert metrics.value("conn_reaper_backend_up", pool=pool, backend=dead_backend) == 0
        for name in UPSTREAM_NAMES:
            if name != DEAD:
                live = incident.backend(name, kind)
                assert agent.reaps(live) == [], info
                assert metrics.value("conn_reaper_sockets_destroyed_total", pool=pool, backend=live) == 0
                assert metrics.value("conn_reaper_backend_up", pool=pool, backend=live) == 1
        # nginx holds nothing established toward the dead upstream, and neither does conntrack.
        assert incident.nginx_upstream_sockets(DEAD, kind) == [], info
        flows = [f for f in incident.nginx_ns.conntrack_flows("ipv4", "tcp")
                 if f.original.destination == dead_backend and f.state == "ESTABLISHED"]
        assert flows == [], f"{[f.line for f in flows]}\n{info}"

    assert agent.find(level="error") == [], info
    # Nothing held back, but for early detection's first verdict on the dead upstream: its carrier went at
    # the cut, so its connections' last segment may be younger than a probe interval then (alive evidence).
    suppressed = agent.metrics().matching("conn_reaper_reaps_suppressed_total")
    assert all(labels["reason"] == "alive_evidence" for labels, value in suppressed if value > 0), info
    assert agent.metrics().value("conn_reaper_reaps_suppressed_total") <= 2, info
    states = agent.backend_states()
    assert states == {f"{pool}/{incident.backend(name, kind)}": ("dead" if name == DEAD else "up")
                      for pool, kind in (("stream", "l4"), ("http", "l7")) for name in UPSTREAM_NAMES}
    for pool in agent.status()["pools"]:
        dead = next(b for b in pool["backends"] if b["state"] == "dead")
        assert dead["last_reap"]["reason"] in ("dead", "still-dead") and dead["last_change"], pool
    print("\n" + "\n".join(f"{k}: {run.case(k).summary()}" for k in ("l4", "l7")))
    print("reaps after the cut (s): " + ", ".join(f"{line.fields['pool']}/{line.fields['reason']}/"
                                                   f"{line.fields['sockets']}@{line.t - run.t_cut:.3f}"
                                                   for line in run.reaps if line.t - run.t_cut < kernel.scaled(1.0)))


def test_without_agent_the_streams_stay_stalled_for_10s(incident):
    client = incident.start_client(l4=STREAMS, l7=STREAMS)

    run = incident.run_incident(client, DEAD, window=WITHOUT_AGENT_WINDOW)
    info = describe(run, None, incident)

    assert run.t_end - run.t_cut >= WITHOUT_AGENT_WINDOW
    for kind in ("l4", "l7"):
        case = run.case(kind)
        assert len(case.on_dead) == run.distribution[kind][DEAD] >= 1, info
        for stream in case.on_dead:
            # Lines in flight at the cut may still land; nothing after that, and no reconnect.
            assert stream.lines_between(run.t_cut + 0.3, run.t_end) == 0, info
            assert not stream.connections_started_between(run.t_cut, run.t_end), info
            assert stream.connections[-1]["end"] is None, info
        assert set(s.index for s in run.stalled_at(run.t_end, kind)) == set(s.index for s in case.on_dead), info
        for stream in case.streams:
            if stream not in case.on_dead:
                kernel.speed_bound(stream.longest_gap(run.t_cut, run.t_end), 0.3, f"live stream {stream.index}: longest gap")
        # nginx still holds its established upstream sockets toward the dead upstream (incident 1's `ss`).
        established = incident.nginx_upstream_sockets(DEAD, kind)
        assert len(established) == len(case.on_dead), f"{established}\n{info}"


def test_dry_run_logs_the_reap_and_ends_nothing(incident, reaper_binary):
    agent = start_agent(incident, reaper_binary, [*backend_flags(incident.all_backends("l4")), *FAST_FLAGS,
                                                  "--dry-run"])
    agent.wait_states({f"default/{b}": "up" for b in incident.all_backends("l4")})
    assert agent.status()["dry_run"] is True
    client = incident.start_client(l4=STREAMS)

    run = incident.run_incident(client, DEAD, window=2.0)
    info = describe(run, agent, incident)

    case = run.case("l4")
    lines = agent.find("reap (dry run: nothing ended)", backend=incident.backend(DEAD), reason="dead")
    assert len(lines) == 1 and lines[0].fields["dry_run"] == "true", info
    assert len(case.on_dead) >= 1, info
    assert_reaped(lines[0], len(case.on_dead), info)
    assert agent.reaps() == [], info
    assert agent.metrics().value("conn_reaper_sockets_destroyed_total") == 0, info
    for stream in case.on_dead:
        assert stream.lines_between(run.t_cut + 0.3, run.t_end) == 0 and stream.connections[-1]["end"] is None, info
    assert len(incident.nginx_upstream_sockets(DEAD)) == len(case.on_dead), info


# ---------------------------------------------------------------------------------------------
# When not to reap


def test_flapping_backend_is_never_reaped(incident, reaper_binary):
    agent = start_agent(incident, reaper_binary, [*backend_flags(incident.all_backends("l4")), *FAST_FLAGS])
    agent.wait_states({f"default/{b}": "up" for b in incident.all_backends("l4")})
    client = incident.start_client(l4=STREAMS)
    distribution = incident.wait_flowing(client)
    flapper = incident.backend(DEAD)
    before = agent.metrics()
    # Every other new connection to the flapper is dropped: the agent's probes (the only new
    # connections while nobody reconnects) fail every other time, never `fall` (2) times in a row.
    incident.upstream_ns[DEAD].iptables("-I", "INPUT", "-p", "tcp", "--dport", str(L4_PORT), "--syn",
                                        "-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0",
                                        "-j", "DROP")
    started = time.monotonic()
    time.sleep(4.0)

    metrics = agent.metrics()
    failures = (metrics.value("conn_reaper_probes_total", backend=flapper, result="failure")
                - before.value("conn_reaper_probes_total", backend=flapper, result="failure"))
    successes = (metrics.value("conn_reaper_probes_total", backend=flapper, result="success")
                 - before.value("conn_reaper_probes_total", backend=flapper, result="success"))
    info = f"failures={failures} successes={successes}\n{agent.log_text()}"
    assert failures >= 6 and successes >= 6, f"the backend did not flap: {info}"
    assert metrics.value("conn_reaper_backend_transitions_total", backend=flapper, to="dead") == 0, info
    assert metrics.value("conn_reaper_sockets_destroyed_total", backend=flapper) == 0, info
    assert agent.reaps() == [] and agent.find("backend dead") == [] and agent.find(level="error") == [], info
    assert agent.backend_states()[f"default/{flapper}"] == "up", info
    dump = client.dump()
    for stream in dump.streams:
        assert len(stream.connections) == 1 and stream.connections[0]["end"] is None, info
        assert stream.lines_between(started + 3.5, started + 4.0) > 0, info
    assert len(incident.nginx_upstream_sockets(DEAD)) == distribution["l4"][DEAD]


def test_all_backends_down_at_once_reaps_nothing(incident, reaper_binary):
    agent = start_agent(incident, reaper_binary, [*backend_flags(incident.all_backends("l4")), *FAST_FLAGS])
    agent.wait_states({f"default/{b}": "up" for b in incident.all_backends("l4")})
    client = incident.start_client(l4=STREAMS)
    incident.wait_flowing(client)

    t_cut, _ = incident.cut_many(UPSTREAM_NAMES)
    agent.wait_states({f"default/{b}": "dead" for b in incident.all_backends("l4")}, timeout=5)
    time.sleep(1.0)

    metrics = agent.metrics()
    info = agent.log_text()
    assert agent.reaps() == [], f"reaped while every backend was failing:\n{info}"
    assert metrics.value("conn_reaper_sockets_destroyed_total") == 0, info
    assert metrics.value("conn_reaper_reaps_suppressed_total", pool="default", reason="all_backends_down") > 0, info
    assert len(agent.find(level="error", pool="default")) == 1, info      # logged once, loudly
    assert agent.status()["pools"][0]["all_down_guard"] is True
    # The streams are untouched: every client connection and every nginx upstream socket is still there.
    dump = client.dump()
    assert all(len(s.connections) == 1 and s.connections[0]["end"] is None for s in dump.streams), info
    assert sum(len(incident.nginx_upstream_sockets(name)) for name in UPSTREAM_NAMES) == STREAMS


def test_after_recovery_reaping_stops(incident, reaper_binary):
    agent = start_agent(incident, reaper_binary, [*backend_flags(incident.all_backends("l4")), *FAST_FLAGS])
    key = f"default/{incident.backend(DEAD)}"
    agent.wait_states({f"default/{b}": "up" for b in incident.all_backends("l4")})
    client = incident.start_client(l4=STREAMS)
    incident.wait_flowing(client)

    t_cut, _ = incident.cut(DEAD)
    agent.wait_states({key: "dead"}, timeout=3)
    wait_for(lambda: len(agent.reaps(incident.backend(DEAD))) >= 2, 3, "a still-dead reap")
    successes_while_down = agent.metrics().value("conn_reaper_probes_total", backend=incident.backend(DEAD),
                                                 result="success")
    incident.restore(DEAD)
    restored = time.monotonic()
    agent.wait_states({key: "up"}, timeout=3)
    successes_when_up = agent.metrics().value("conn_reaper_probes_total", backend=incident.backend(DEAD),
                                              result="success")
    time.sleep(0.3)
    reaps_when_up = len(agent.reaps(incident.backend(DEAD)))
    time.sleep(1.5)

    info = agent.log_text()
    # rise 2: up after two good probes, not on the first one.
    assert successes_when_up - successes_while_down >= 2, info
    # Two of three backends answered all along: the all-down guard has no business engaging, not
    # even while the recovered backend is between its first good probe and `rise`.
    assert agent.find(level="error") == [], f"an error was logged with two healthy backends:\n{info}"
    assert agent.metrics().value("conn_reaper_reaps_suppressed_total", reason="all_backends_down") == 0, info
    (up_line,) = agent.find("backend up", backend=incident.backend(DEAD), since=restored)
    # A reap already running at the transition may finish just after it; none may start after it.
    late = [line.text for line in agent.reaps(incident.backend(DEAD))
            if line.reap_started_at > up_line.logged_at + 0.002]
    assert late == [], f"reaps started after the backend was up again:\n{info}"
    assert len(agent.reaps(incident.backend(DEAD))) == reaps_when_up, f"reaping went on after recovery:\n{info}"
    metrics = agent.metrics()
    assert metrics.value("conn_reaper_backend_transitions_total", backend=incident.backend(DEAD), to="up") == 2
    assert metrics.value("conn_reaper_backend_up", backend=incident.backend(DEAD)) == 1
    # And nothing else was touched: the streams on the live upstreams kept their first connection.
    dump = client.dump()
    untouched = [s for s in dump.streams if s.backend_at(t_cut) != DEAD]
    assert untouched and all(len(s.connections) == 1 for s in untouched), info
    assert incident.wait_flowing(client, need_all_backends=False)


# ---------------------------------------------------------------------------------------------
# The agent's own surfaces, in the same lab


def test_readyz_status_and_metrics(incident, reaper_binary):
    incident.cut(DEAD)        # down before the agent starts: its first probe can only time out
    agent = incident.start_agent(reaper_binary, [
        *backend_flags(incident.all_backends("l4")), "--probe", "tcp", "--interval", "1s", "--timeout", "800ms",
        "--rise", "2", "--fall", "2"])
    agent.wait_listening()

    code, body = agent.get("/readyz")
    assert code == 503, body
    status = agent.status()
    assert status["ready"] is False and status["dry_run"] is False
    assert [b["state"] for b in status["pools"][0]["backends"]] == ["unknown"] * 3
    assert agent.get("/healthz")[0] == 200

    wait_for(lambda: agent.get("/readyz")[0] == 200, 5, "/readyz 200")
    backends = {b: "up" for b in incident.all_backends("l4")}
    backends[incident.backend(DEAD)] = "dead"
    agent.wait_states({f"default/{b}": s for b, s in backends.items()}, timeout=6)

    # The down transition is recorded before its reap is: wait for the reap to show too.
    status = wait_for(lambda: (lambda doc: doc if any(b.get("last_reap") for b in doc["pools"][0]["backends"])
                               else None)(agent.status()), 3, "last_reap in /status")
    assert status["ready"] is True
    (pool,) = status["pools"]
    assert pool["name"] == "default" and pool["all_down_guard"] is False
    assert [b["address"] for b in pool["backends"]] == incident.all_backends("l4")
    for backend in pool["backends"]:
        assert backend["state"] == backends[backend["address"]] and backend["last_change"], backend
        assert backend["last_probe"], backend
    dead = next(b for b in pool["backends"] if b["state"] == "dead")
    assert dead["last_reap"]["reason"] in ("dead", "still-dead"), dead
    assert dead["last_reap"]["sockets"] == 0, dead      # nothing was connected to it
    assert all(b.get("last_reap") is None for b in pool["backends"] if b["state"] == "up")

    metrics = agent.metrics()
    assert metrics.has("conn_reaper_build_info")
    for backend, state in backends.items():
        assert metrics.value("conn_reaper_backend_up", pool="default", backend=backend) == (1 if state == "up" else 0)
        assert metrics.value("conn_reaper_probes_total", backend=backend,
                             result="success" if state == "up" else "failure") >= 2
        assert metrics.value("conn_reaper_backend_transitions_total", backend=backend, to=state) == 1
    assert agent.stop() == 0, agent.log_text()


def test_sighup_reload_changes_backends_and_a_broken_config_keeps_the_old(incident, reaper_binary):
    def config(names, **probe):
        return pool_yaml([{"name": "apiserver", "backends": [incident.backend(n) for n in names],
                           "probe": {**FAST, **probe}}])
    path = incident.write_file("agent.yaml", config(["up1", "up2"]))
    agent = start_agent(incident, reaper_binary, ["--config", path])
    agent.wait_states({f"apiserver/{incident.backend(n)}": "up" for n in ("up1", "up2")})
    client = incident.start_client(l4=STREAMS)
    distribution = incident.wait_flowing(client)["l4"]

    # The agent also reloads when the file's stamp changes; keep the stamp so only SIGHUP can do it.
    incident.rewrite_unnoticed("agent.yaml", config(["up2", "up3"]))
    time.sleep(1.5)         # longer than the agent's file poll: a stamp change would have been seen
    assert agent.metrics().value("conn_reaper_config_reloads_total") == 0
    agent.signal(signal.SIGHUP)
    wait_for(lambda: agent.metrics().value("conn_reaper_config_reloads_total", result="success") == 1, 5,
             "a successful reload")
    reloaded = wait_for(lambda: agent.find("configuration reloaded"), 3, "the reload's log line")
    assert [line.fields.get("trigger") for line in reloaded] == ["SIGHUP"], agent.log_text()
    wanted = {f"apiserver/{incident.backend(n)}": "up" for n in ("up2", "up3")}
    assert agent.wait_states(wanted) == wanted        # up1 is no longer watched

    # The new list is the one in force: up3 (added) is reaped, up1 (removed) is not.
    incident.cut_many(["up1", "up3"])
    agent.wait_states({f"apiserver/{incident.backend('up3')}": "dead"}, timeout=3)
    time.sleep(0.5)
    up3_reaps = agent.reaps(incident.backend("up3"))
    assert up3_reaps, agent.log_text()
    assert_reaped(up3_reaps[0], distribution["up3"], agent.log_text())
    assert agent.reaps(incident.backend("up1")) == []
    assert len(incident.nginx_upstream_sockets("up1")) == distribution["up1"]

    # A broken configuration: logged, counted, and the running one stays.
    incident.rewrite_unnoticed("agent.yaml", config(["up2", "up3"]).replace("interval:", "intervl:"))
    agent.signal(signal.SIGHUP)
    wait_for(lambda: agent.metrics().value("conn_reaper_config_reloads_total", result="failure") == 1, 5,
             "a failed reload")
    assert agent.running()
    failed = wait_for(lambda: agent.find("configuration not reloaded: the running one stays"), 3,
                      "the failed reload's log line")
    assert len(failed) == 1 and failed[0].fields.get("trigger") == "SIGHUP", agent.log_text()
    assert "pools[0].probe.intervl" in failed[0].fields.get("error", ""), agent.log_text()
    assert set(agent.backend_states()) == set(wanted)
    assert agent.get("/healthz")[0] == 200
    assert agent.stop() == 0


def test_nginx_conf_mode_finds_the_upstreams_and_reaps(incident, reaper_binary):
    agent = start_agent(incident, reaper_binary, ["--nginx-conf", incident.conf_path, *FAST_FLAGS])
    pools = {pool["name"]: [b["address"] for b in pool["backends"]] for pool in agent.status()["pools"]}
    assert pools == {NGINX_STREAM_UPSTREAM: incident.all_backends("l4"), NGINX_HTTP_UPSTREAM: incident.all_backends("l7")}
    all_up(agent, incident, pools=((NGINX_STREAM_UPSTREAM, "l4"), (NGINX_HTTP_UPSTREAM, "l7")))
    client = incident.start_client(l4=STREAMS)

    run = incident.run_incident(client, "up3", window=3.0, agent=agent)
    info = describe(run, agent, incident)

    case = run.case("l4")
    reaps = agent.find("reaped", pool=NGINX_STREAM_UPSTREAM, backend=incident.backend("up3"), reason="dead")
    assert reaps and len(case.on_dead) >= 1, info
    assert_reaped(reaps[0], len(case.on_dead), info)
    assert all(v is not None for v in case.stalled_recoveries), info
    assert run.stalled_at(run.t_end) == [], info

    # The file is watched: dropping a server from the stream upstream is picked up without a signal.
    incident.write_nginx_conf(stream_servers=[incident.backend("up2"), incident.backend("up3")])
    wait_for(lambda: agent.metrics().value("conn_reaper_config_reloads_total", result="success") >= 1, 5,
             "a reload after the file changed")
    wanted = [incident.backend("up2"), incident.backend("up3")]

    def stream_pool():
        pools = {pool["name"]: [b["address"] for b in pool["backends"]] for pool in agent.status()["pools"]}
        return pools[NGINX_STREAM_UPSTREAM] == wanted
    wait_for(stream_pool, 3, f"/status to list {wanted} in {NGINX_STREAM_UPSTREAM}")

    # --upstream picks one block; a name that is not there is a configuration error naming the flag.
    only = incident.nginx_ns.run([reaper_binary, "run", "--nginx-conf", incident.conf_path,
                                            "--upstream", "nope", *FAST_FLAGS], check=False, timeout=20)
    assert only.returncode == 2 and "--upstream" in only.stderr and NGINX_STREAM_UPSTREAM in only.stderr, only.stderr


def test_invalid_configuration_exits_2_naming_the_key(incident, reaper_binary):
    client = incident.start_client(l4=6)
    distribution = incident.wait_flowing(client)["l4"]
    good = {"name": "apiserver", "backends": incident.all_backends("l4"), "probe": FAST}
    cases = {
        "pools[0].probe.intervl": pool_yaml([good]).replace("interval:", "intervl:"),
        "pools[0].probe.timeout": pool_yaml([{**good, "probe": {**FAST, "timeout": "900ms"}}]),
        "pools[0].backends": pool_yaml([{**good, "backends": ["10.233.1.2:6443", "10.233.1.2:6443"]}]),
        "pools[1].name": pool_yaml([good, good]),
        "max_sockets_per_second": pool_yaml([good], max_sockets_per_second=0),
    }
    for key, text in cases.items():
        path = incident.write_file("bad.yaml", text)
        result = incident.nginx_ns.run([reaper_binary, "run", "--config", path], check=False, timeout=20)
        assert result.returncode == 2, f"{key}: exit {result.returncode}\n{result.stderr}"
        assert key in result.stderr, f"{key} not named:\n{result.stderr}"
    for flags, key in ((["--interval", "5x"], "--interval"), (["--backend", "10.233.1.2"], "--backend"),
                       (["--protocols", "sctp"], "--protocols")):
        argv = [reaper_binary, "run", "--backend", incident.backend("up1"), *FAST_FLAGS, *flags]
        result = incident.nginx_ns.run(argv, check=False, timeout=20)
        assert result.returncode == 2 and key in result.stderr, f"{flags}: exit {result.returncode}\n{result.stderr}"
    # Nothing was reaped: the streams kept their first connection and still flow.
    assert all(len(s.connections) == 1 for s in client.dump().streams)
    assert incident.wait_flowing(client, need_all_backends=False)
    assert sum(len(incident.nginx_upstream_sockets(n)) for n in UPSTREAM_NAMES) == sum(distribution.values())
