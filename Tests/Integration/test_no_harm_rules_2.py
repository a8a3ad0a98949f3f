"""No harm from what a probe cannot know, part 2: four more rules of the agent, each proved both ways
against the real kernel (the living kept, the dead still reaped).

The lab: the agent's namespace ``node`` (10.244.0.1: the agent runs, probes and reaps there, and there
live the clients' connections unless a test says otherwise) and ``srv`` (backends A 10.244.0.2,
B 10.244.0.3, C 10.244.0.4 on the service port 22080). Kept means a connection still carries data
afterwards (a stream still flows, an echo still comes back); ended means its owner saw ECONNABORTED
(SOCK_DESTROY), or the peer reconnected.

1. Recovery wins on a lossy path: A found dead (blackholed) comes back with a third of the SYNs
   toward it dropped (its probes and clients' connects); connections made after its first answer,
   streams A writes to every 200 ms, are all kept for 10 s while its probes keep failing now and
   then. Other way: it stays dead, and every new connect toward it is ended.
2. Missing evidence is not evidence of death: a pool reaping two client namespaces, one of whose
   namespace files is removed after start; A dies: no dead verdict (``evidence_missing``), nothing
   ended. Other way: both readable, the same death is reaped in both.
3. The stuck detector's local fault: the heartbeat connections to A and B blackholed on this side at
   once end nothing for the 7 s it lasts (``local_fault`` counted, one warning), also when their last
   ACKs were 0.6 s apart (more than a scan: each crosses stuck_after on its own scan), and nothing
   once it lifts, though each recovers at its own next retransmission, seconds apart. Other way: only
   A's blackholed while B's is acknowledged: A's ended, B's kept. A third backend C that holds only
   idle connections hides nothing: A's and B's dropped at once are still a local fault; with C's
   heartbeat acknowledged the fault is A's and B's own paths', and both are ended.
4. A survivor answers now, the side that holds: only A's probes fail (a fault near the prober
   dropping its SYNs toward A) while B and C answer: A reaped, B's and C's connections kept. The
   same fault reaching A, B +300 ms, C +600 ms ends nothing, also with its onset timed against the
   probes' phases so that at the first verdict the last backend's latest probe had succeeded: a
   survivor must answer a probe sent after the dead one's last failed probe.
5. A slow pass stops where it is once the backend answers: a pass over two client namespaces that
   waits 5 s in front of the second (a failpoint) ends nothing there once the backend answered
   meanwhile, not even connections made after the answer. Other way: the backend stays dead and the
   pass goes on into the second namespace.
6. A rebalance ends only the balancer's connections: a local client's idle connections to one backend
   are left alone, its owner (uid, cgroup) told apart by sock_diag. Other way: `rebalance_owner: any`
   ends them first.

Addresses 10.244.0.0/16, ports 22000-22999.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from lab.agent import Agent, pool_yaml
from lab.netns import wait_for
from lab.traffic import PeerProcess, StreamClient

NODE, A, B, C = "10.244.0.1", "10.244.0.2", "10.244.0.3", "10.244.0.4"
PORT = 22080
AP, BP, CP = f"{A}:{PORT}", f"{B}:{PORT}", f"{C}:{PORT}"
LISTEN = ("127.0.0.1", 22747)
FAST = {"type": "tcp", "interval": "200ms", "timeout": "150ms", "rise": 2, "fall": 2}
HOLD = 3.0
SUPPRESSED = "conn_reaper_reaps_suppressed_total"

#: A backend that writes ``NAME SEQ`` to every connection it accepts, every 200 ms (a watch stream).
WRITER = r"""
import socket, sys, threading, time
def serve(address, name):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, int(sys.argv[1]))); server.listen(512)
    def write(conn):
        seq = 0
        try:
            while True:
                conn.sendall(f"{name} {seq}\n".encode()); seq += 1; time.sleep(0.2)
        except OSError:
            conn.close()
    while True:
        conn, _ = server.accept()
        threading.Thread(target=write, args=(conn,), daemon=True).start()
for pair in sys.argv[2:]:
    address, name = pair.split("=")
    threading.Thread(target=serve, args=(address, name), daemon=True).start()
print("ready", flush=True)
time.sleep(3600)
"""


class World:
    def __init__(self, lab, binary: str, echo: bool = True) -> None:
        self.lab, self.binary = lab, binary
        self.node, self.srv = lab.namespace("node"), lab.namespace("srv")
        lab.link(self.node, self.srv, [f"{NODE}/24"], [f"{A}/24", f"{B}/24", f"{C}/24"])
        if echo:
            self.server = self.srv.peer()
            for address in (A, B, C):
                self.server.listen("tcp", address, PORT)
        self.client = self.node.peer()
        self.agent: Agent | None = None

    def start_agent(self, tmp_path, pools: list[dict], **top) -> Agent:
        path = tmp_path / "agent.yaml"
        path.write_text(pool_yaml(pools, listen=LISTEN, **top))
        self.agent = Agent(self.node, self.binary, ["--config", str(path)], listen=LISTEN)
        self.agent.wait_ready()
        self.agent.wait_states({f"{p['name']}/{b}": "up" for p in pools for b in p["backends"]})
        return self.agent

    def writers(self) -> None:
        process = self.srv.popen(["python3", "-u", "-c", WRITER, str(PORT), f"{A}=A", f"{B}=B", f"{C}=C"],
                                 stdout=subprocess.PIPE)
        assert process.stdout.readline().strip() == b"ready"

    def blackhole(self, address: str) -> list[list[str]]:
        """Everything to and from ``address`` vanishes (a silent death); returns the rules."""
        rules = [["INPUT", "-d", address, "-j", "DROP"], ["OUTPUT", "-s", address, "-j", "DROP"]]
        for rule in rules:
            self.srv.iptables("-I", *rule)
        return rules


@pytest.fixture
def world(lab, reaper_binary):
    return lambda **options: World(lab, reaper_binary, **options)


def info(agent: Agent) -> str:
    return agent.log_text(60)


def lines(agent: Agent, prefix: str, since: float = 0.0, **fields) -> list:
    return [line for line in agent.log() if line.t >= since and line.msg.startswith(prefix)
            and all(line.fields.get(k) == v for k, v in fields.items())]


def states_during(agent: Agent, keys: list[str], seconds: float) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {key: set() for key in keys}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        states = agent.backend_states()
        for key in keys:
            seen[key].add(states.get(key))
        time.sleep(0.1)
    return seen


def wait_aborted(peer, agent: Agent, ids: list[int], timeout: float = 5.0) -> None:
    try:
        wait_for(lambda: peer.state(ids) == ["ECONNABORTED"] * len(ids), timeout, f"ECONNABORTED on {ids}", interval=0.1)
    except AssertionError as error:
        raise AssertionError(f"{error}: now {peer.state(ids)}\n{info(agent)}") from None


def destroyed(metrics, backend: str) -> float:
    return metrics.value("conn_reaper_sockets_destroyed_total", backend=backend)


def reaps_of(agent: Agent, backend: str, timeout: float = 2.0) -> list:
    """The ``reaped`` lines of ``backend`` once the first is logged (it follows the destroys), and the
    destroyed-sockets metric caught up with them."""
    agent.wait_line(lambda l: l.msg == "reaped" and l.fields.get("backend") == backend, timeout)
    reaps = agent.reaps(backend)
    total = sum(int(r.fields.get("sockets", 0)) for r in reaps)
    wait_for(lambda: destroyed(agent.metrics(), backend) >= total, timeout, f"the metrics to count {total} sockets")
    return reaps


def successes(agent: Agent, pool: str, backend: str) -> float:
    return agent.metrics().value("conn_reaper_probes_total", pool=pool, backend=backend, result="success")


# ---------------------------------------------------------------------------------------------
# 1. Recovery wins on a lossy path

LOSS = ["INPUT", "-d", A, "-p", "tcp", "--syn", "-m", "statistic", "--mode", "random", "--probability", "0.33", "-j", "DROP"]
STREAMS = 6
WATCH = 10.0


def ended(client: StreamClient, since: float = 0.0) -> list[dict]:
    return [c for s in client.dump().streams for c in s.connections if c["end"] is not None and c["start"] >= since]


def dead_and_reaped(w: World, tmp_path) -> tuple[Agent, StreamClient, float]:
    """A and B serve streams; A is blackholed until it is dead and its streams were ended."""
    w.writers()
    agent = w.start_agent(tmp_path, [{"name": "api", "backends": [AP, BP], "probe": FAST}])
    before = StreamClient(w.node, [("l4", A, PORT, 4, ""), ("l4", B, PORT, 2, "")])
    wait_for(lambda: all(s["age"] is not None and s["age"] < 0.5 for s in before.status()["streams"]), 5,
             "every stream flowing")
    t_cut = time.monotonic()
    w.blackhole(A)
    agent.wait_states({f"api/{AP}": "dead"}, timeout=5)
    wait_for(lambda: sum(c["why"] == "ECONNABORTED" for c in ended(before)) >= 4, 5, "A's 4 streams aborted")
    return agent, before, t_cut


def test_a_dead_backend_back_on_a_lossy_path_keeps_every_connection_made_after_its_first_answer(world, tmp_path):
    """Recovery wins: once a dead backend answers a probe, nothing is ended until `fall` new failures
    AND a new look at its connections say dead again. A comes back with a third of the SYNs toward it
    lost (iptables statistic in its namespace: its probes fail one in three, two in a row every 2 s or
    so at 200 ms, and clients' connects are delayed by SYN retransmits), but the streams made after its
    first answer receive a line every 200 ms: none of them is ended over 10 s (nor a late connect), and
    every one that flows keeps flowing."""
    w = world(echo=False)
    agent, before, t_cut = dead_and_reaped(w, tmp_path)
    for rule in (["INPUT", "-d", A, "-j", "DROP"], ["OUTPUT", "-s", A, "-j", "DROP"]):
        w.srv.iptables("-D", *rule)
    w.srv.iptables("-I", *LOSS)                   # back, a third of the SYNs toward it lost (probes and clients')
    answered = successes(agent, "api", AP)
    t_back = time.monotonic()
    wait_for(lambda: successes(agent, "api", AP) > answered, 5, "A's first answer after its return", interval=0.02)
    t_answer, wall_answer = time.monotonic(), time.time()
    after = StreamClient(w.node, [("l4", A, PORT, STREAMS, "")])
    # Most streams flowing first (a client SYN lost here is sent again after 1, 3, 7 s: a stream may
    # connect late, and the agent must leave its connect alone too).
    wait_for(lambda: sum(s["backend"] == "A" for s in after.status()["streams"]) >= STREAMS - 2, 8,
             "most streams to get a line")
    before.stop()
    t_watch = time.monotonic()
    flowing = [i for i, s in enumerate(after.status()["streams"]) if s["backend"] == "A"]
    failed_before = agent.metrics().value("conn_reaper_probes_total", pool="api", backend=AP, result="failure")
    time.sleep(WATCH)
    t_end = time.monotonic()
    dump = after.dump()
    metrics = agent.metrics()
    failed = metrics.value("conn_reaper_probes_total", pool="api", backend=AP, result="failure") - failed_before
    text = info(agent)

    ends = [c for s in dump.streams for c in s.connections if c["end"] is not None]
    assert ends == [], f"connections made after A's return were ended: {ends}\n{text}"
    assert all(len(s.connections) == 1 for s in dump.streams), f"a stream reconnected\n{text}"
    # The streams that flowed when the watch began flow still: a line in its last second, and at
    # least 40 of the 50 A wrote each (the data path loses nothing).
    gaps = [s.longest_gap(t_watch, t_end) for s in dump.streams]
    counts = [s.lines_between(t_watch, t_end, "A") for s in dump.streams]
    assert all(dump.streams[i].lines_between(t_end - 1.0, t_end, "A") >= 1 and counts[i] >= 40 for i in flowing), \
        f"a stream stalled: flowing {flowing}, gaps {gaps}, lines {counts}\n{text}"
    assert failed >= 3, f"only {failed:g} probes of A failed in {WATCH:g}s: the path was not lossy\n{text}"
    late = [r for r in agent.reaps(AP) if r.reap_started_at > wall_answer]   # a pass begun before may end after
    assert late == [], f"reaps of A after its first answer: {[r.text for r in late]}\n{text}"
    destroyed_total = destroyed(metrics, AP)
    print(f"\nA dead, back with 33% of SYNs lost: first answer {t_answer - t_back:.2f}s after; {failed:g} of its "
          f"probes failed in {WATCH:g}s, {len(dump.streams)} streams made after it answered ({len(flowing)} flowing at "
          f"the start): 0 ended, lines {counts}, longest gap {max(gaps[i] for i in flowing):.2f}s; alive_evidence {metrics.value(SUPPRESSED, pool='api', reason='alive_evidence'):g}, state now "
          f"{agent.backend_states()[f'api/{AP}']}; sockets destroyed before its return: {destroyed_total:g}")


def test_a_dead_backend_that_stays_dead_has_every_new_connect_ended(world, tmp_path):
    """The other way: A stays blackholed. Its streams were ended when it was found dead, and every
    reconnect their clients make toward it keeps being ended (ECONNABORTED on the connect), as does a
    fresh connect, within the 150 ms still-dead cadence of its first minute."""
    w = world(echo=False)
    agent, before, t_cut = dead_and_reaped(w, tmp_path)
    t_dead = time.monotonic()
    time.sleep(3.0)
    probe = w.node.peer()
    outcome = probe.connect_outcome(A, PORT, timeout=2.0)
    text = info(agent)
    later = [c for c in ended(before, since=t_dead) if c["connected"] is None]
    aborted = [c for c in later if c["why"] == "ECONNABORTED"]
    assert outcome[0] == "ECONNABORTED" and outcome[1] < 0.5, f"a new connect toward A: {outcome}\n{text}"
    assert len(aborted) >= 10 and len(aborted) >= len(later) - 4, \
        f"{len(aborted)} of {len(later)} reconnects toward A aborted\n{text}"
    assert [c for c in ended(before) if c["why"] == "ECONNABORTED" and c["data"] and c["data"][-1][1] == "B"] == [], text
    assert agent.backend_states()[f"api/{AP}"] == "dead", text
    print(f"\nA stays dead: {len(aborted)} reconnects toward it aborted in 3 s, a fresh connect aborted after "
          f"{outcome[1]:.3f}s")


# ---------------------------------------------------------------------------------------------
# 2. Missing evidence is not evidence of death


class Clients:
    """Two client namespaces c1 (10.244.1.1) and c2 (10.244.2.1), each linked to srv, each with 3 idle
    connections to A and one to B; c2's namespace file also bind-mounted at ``path2``."""

    def __init__(self, w: World, tmp_path) -> None:
        self.peers, self.on_a, self.on_b, self.paths = [], [], [], []
        for index in (1, 2):
            ns = w.lab.namespace(f"c{index}")
            w.lab.link(ns, w.srv, [f"10.244.{index}.1/24"], [f"10.244.{index}.254/24"])
            ns.add_route("10.244.0.0/24", via=f"10.244.{index}.254")
            peer = ns.peer()
            self.peers.append(peer)
            self.on_a.append(peer.connect(A, PORT, count=3))
            self.on_b.append(peer.connect(B, PORT))
            self.paths.append(f"/run/netns/{ns.name}")
        self.mount = str(tmp_path / "c2.net")
        open(self.mount, "w").close()
        subprocess.run(["mount", "--bind", self.paths[1], self.mount], check=True)
        self.mounted = True

    def remove_mount(self) -> None:
        if self.mounted:
            subprocess.run(["umount", self.mount], check=True)
            self.mounted = False
        if os.path.exists(self.mount):
            os.unlink(self.mount)

    def states(self) -> list[list[str]]:
        return [peer.state(ids) for peer, ids in zip(self.peers, self.on_a)]


@pytest.fixture
def clients(world, tmp_path):
    made = []

    def build():
        w = world()
        c = Clients(w, tmp_path)
        made.append(c)
        return w, c
    try:
        yield build
    finally:
        for c in made:
            c.remove_mount()


def netns_pool(paths: list[str]) -> list[dict]:
    return [{"name": "api", "backends": [AP, BP], "probe": FAST, "netns": "[" + ", ".join(paths) + "]"}]


def test_a_death_seen_through_an_unreadable_namespace_is_no_verdict(clients, tmp_path):
    """Missing evidence: the pool reaps c1 and c2, c2 through a bind-mounted file removed after start
    (the namespace lives on, holding connections the agent can no longer look at). A dies with idle
    connections from both: its probes say nothing answers, but the look at its connections is
    incomplete, so no dead verdict is made (`evidence_missing`, one warning) and nothing is ended; the
    connections work again once A comes back."""
    w, c = clients()
    agent = w.start_agent(tmp_path, netns_pool([c.paths[0], c.mount]))
    c.remove_mount()
    t_cut = time.monotonic()
    rules = w.blackhole(A)
    seen = states_during(agent, [f"api/{AP}", f"api/{BP}"], HOLD)
    metrics = agent.metrics()
    missing = metrics.value(SUPPRESSED, pool="api", reason="evidence_missing")
    warned = lines(agent, "not dead: nothing answers its probes, but its connections could not all be read",
                   backend=AP)
    states = c.states()
    text = info(agent)

    assert "dead" not in seen[f"api/{AP}"], f"{seen}\n{text}"
    assert lines(agent, "backend dead", backend=AP) == [], text
    assert agent.reaps(AP) == [] and destroyed(metrics, AP) == 0, text
    assert states == [["ok"] * 3, ["ok"] * 3], f"{states}\n{text}"
    assert missing > 0, text
    assert len(warned) == 1 and warned[0].fields.get("reason") == "evidence_missing", f"{[l.text for l in warned]}\n{text}"
    assert metrics.value(SUPPRESSED, pool="api", reason="all_backends_down") == 0, text
    for rule in rules:
        w.srv.iptables("-D", *rule)
    results = [peer.probe(ids + b, timeout=5) for peer, ids, b in zip(c.peers, c.on_a, c.on_b)]
    assert results == [["ok"] * 4, ["ok"] * 4], f"{results}\n{info(agent)}"
    assert agent.reaps(AP) == [], info(agent)
    print(f"\nA blackholed {HOLD:g}s, c2's namespace file gone: states {seen[f'api/{AP}']}, evidence_missing "
          f"{missing:g}, 0 of 6 connections ended, all answer after the return")


def test_a_death_seen_through_two_readable_namespaces_is_reaped_in_both(clients, tmp_path):
    """The other way: the same pool, both namespace files readable: A's death is a dead verdict, and its
    idle connections in c1 and in c2 are ended (ECONNABORTED), B's kept."""
    w, c = clients()
    agent = w.start_agent(tmp_path, netns_pool([c.paths[0], c.mount]))
    t_cut = time.monotonic()
    w.blackhole(A)
    for peer, ids in zip(c.peers, c.on_a):
        wait_aborted(peer, agent, ids)
    t_aborted = time.monotonic()
    reaps = reaps_of(agent, AP)
    metrics = agent.metrics()
    text = info(agent)
    assert lines(agent, "backend dead", backend=AP), text
    assert sorted(r.fields.get("netns") for r in reaps if r.fields.get("reason") == "dead") == sorted(c.paths[0:1] + [c.mount]), text
    assert metrics.value(SUPPRESSED, pool="api", reason="evidence_missing") == 0, text
    assert destroyed(metrics, AP) >= 6, text
    assert [peer.probe(b) for peer, b in zip(c.peers, c.on_b)] == [["ok"], ["ok"]], text
    print(f"\nA blackholed, both namespaces readable: its 6 connections in c1 and c2 aborted "
          f"{t_aborted - t_cut:.2f}s after the cut")


# ---------------------------------------------------------------------------------------------
# 3. The stuck detector's local fault

STUCK_PROBE = {"type": "tcp", "interval": "500ms", "timeout": "300ms"}


def heartbeats(w: World) -> dict[str, tuple[PeerProcess, int]]:
    out = {}
    for name, address in (("A", A), ("B", B)):
        events = PeerProcess(w.node, "heartbeat", address, PORT)
        connected = events.wait_event("connected", 5)
        assert connected and events.wait_event("echo", 5), f"no heartbeat to {name}: {events.stderr()}"
        out[name] = (events, connected["port"])
    return out


def drop_ports(w: World, ports: list[int]) -> list[str]:
    rule = ["OUTPUT", "-p", "tcp", "-m", "multiport", "--sports", ",".join(map(str, ports)), "-j", "DROP"]
    w.node.iptables("-I", *rule)
    return rule


def stuck_agent(w: World, tmp_path) -> Agent:
    return w.start_agent(tmp_path, [{"name": "api", "backends": [AP, BP], "stuck_after": "2s", "probe": STUCK_PROBE}])


def test_a_heartbeat_to_one_backend_blackholed_is_ended_and_the_other_kept(world, tmp_path):
    """The other way: only A's heartbeat connection is dropped. B's is acknowledged, so the fault is
    A's path: A's connection is ended (ECONNABORTED, the client reconnects and is answered), B's kept."""
    w = world()
    agent = stuck_agent(w, tmp_path)
    beats = heartbeats(w)
    events_a, port_a = beats["A"]
    t_drop = time.monotonic()
    drop_ports(w, [port_a])
    failure = events_a.wait_event("failed", 8, after=t_drop)
    text = info(agent)
    assert failure and failure["error"] == "ECONNABORTED", f"{failure}\n{text}"
    recovered = events_a.wait_event(lambda e: e["event"] == "echo" and e["port"] != port_a, 5, after=t_drop)
    assert recovered, f"{events_a.events[-3:]}\n{text}"
    events_b, port_b = beats["B"]
    assert events_b.events_named("failed") == [], text
    assert events_b.wait_event(lambda e: e["event"] == "echo" and e["port"] == port_b, 2, after=time.monotonic())
    metrics = agent.metrics()
    assert metrics.value(SUPPRESSED, pool="api", reason="local_fault") == 0, text
    audit = lines(agent, "stuck connection ended")
    assert len(audit) == 1 and audit[0].fields.get("backend") == AP, f"{[l.text for l in audit]}\n{text}"
    print(f"\nA's heartbeat dropped: ended {failure['t'] - t_drop:.2f}s after, answered again "
          f"{recovered['t'] - t_drop:.2f}s after; B's kept")


def socket_open(w: World, port: int) -> bool:
    return f":{port} " in w.node.run(["ss", "-Htn", "state", "established", "sport", f"= :{port}"]).stdout + " "


def blackhole_both_heartbeats(w: World, tmp_path, hold: float):
    """Both heartbeat connections dropped on this side at once for ``hold`` seconds; the agent must
    have held nothing but a local fault by then. Returns the agent, the heartbeats and the rule."""
    agent = stuck_agent(w, tmp_path)
    beats = heartbeats(w)
    rule = drop_ports(w, [port for _, port in beats.values()])
    time.sleep(hold)
    metrics = agent.metrics()
    faults = metrics.value(SUPPRESSED, pool="api", reason="local_fault")
    warned = lines(agent, "stuck connections toward every backend of the pool at once", pool="api")
    text = info(agent)
    failures = {name: ev.events_named("failed") for name, (ev, _) in beats.items()}
    assert lines(agent, "stuck connection ended") == [], text
    assert failures == {"A": [], "B": []}, f"{failures}\n{text}"
    assert all(socket_open(w, port) for _, port in beats.values()), f"{w.node.run(['ss', '-tn']).stdout}\n{text}"
    assert destroyed(metrics, AP) == 0 and destroyed(metrics, BP) == 0, text
    assert faults > 0, text
    assert len(warned) == 1 and warned[0].fields.get("reason") == "local_fault", f"{[l.text for l in warned]}\n{text}"
    return agent, beats, rule, faults


def test_heartbeats_to_every_backend_blackholed_at_once_are_a_local_fault_and_nothing_is_ended(world, tmp_path):
    """The heartbeat connections to both backends of the pool stop being acknowledged at the same
    instant (one rule on this side drops both), while probes pass. Every backend stuck at once is a
    fault here: for the 7 s it lasts (stuck_after 2s: 10 scans past the threshold) nothing is ended,
    both connections stay established with their data queued (`local_fault` counted, one warning).
    (Judged per scan on the condemned alone, about one run in five ended both, 0.5 s apart, each the
    only stuck one of its scan, when the heartbeats' phases put their last ACKs a scan apart.)"""
    w = world()
    agent, beats, rule, faults = blackhole_both_heartbeats(w, tmp_path, 7.0)
    print(f"\nheartbeats to A and B dropped 7 s at once: local_fault {faults:g}, 0 ended, both still established")


#: Two heartbeats, to A at each second and to B 0.6 s later; prints each echo and each end as JSON.
PHASED = r"""
import errno, json, select, socket, sys, time
port = int(sys.argv[3])
socks = {"A": socket.create_connection((sys.argv[1], port)), "B": socket.create_connection((sys.argv[2], port))}
print(json.dumps({n: s.getsockname()[1] for n, s in socks.items()}), flush=True)
start = time.monotonic() + 0.2
due = {"A": start, "B": start + 0.6}
live = dict(socks)
def say(**event):
    print(json.dumps({"t": time.monotonic(), **event}), flush=True)
while live:
    now = time.monotonic()
    for n, s in list(live.items()):
        if now >= due[n]:
            due[n] += 1.0
            try:
                s.send(b"hb\n")
            except OSError as e:
                say(ended=n, error=errno.errorcode.get(e.errno, str(e.errno))); live.pop(n)
    ready, _, _ = select.select(list(live.values()), [], [], 0.01)
    for s in ready:
        n = next(k for k, v in live.items() if v is s)
        try:
            data = s.recv(100)
        except OSError as e:
            say(ended=n, error=errno.errorcode.get(e.errno, str(e.errno))); live.pop(n); continue
        if not data:
            say(ended=n, error="eof"); live.pop(n); continue
        say(echo=n)
"""


class Phased:
    def __init__(self, w: World) -> None:
        import json
        import threading
        self.process = w.node.popen(["python3", "-u", "-c", PHASED, A, B, str(PORT)], stdout=subprocess.PIPE)
        self.ports = json.loads(self.process.stdout.readline())
        self.events: list[dict] = []
        threading.Thread(target=lambda: [self.events.append(json.loads(l)) for l in self.process.stdout],
                         daemon=True).start()


def test_heartbeats_blackholed_at_once_whose_last_acks_are_0_6_s_apart_are_a_local_fault(world, tmp_path):
    """The heartbeats to A and to B (one a second, B's 0.6 s after A's) stop being acknowledged at the
    same instant, one rule on this side dropping both. Both have data waiting from then on, but each
    crosses stuck_after from its own last ACK, and those are 0.6 s apart, more than a scan (500 ms):
    A is condemned a scan before B. B's data has then waited past half of stuck_after, so B is in
    trouble too: every backend at once, a local fault, and nothing is ended. (Judged on the condemned
    alone, A was ended every run, B a scan later.)"""
    w = world()
    agent = stuck_agent(w, tmp_path)
    beats = Phased(w)
    wait_for(lambda: [e for e in beats.events if e.get("echo") == "B"], 5, "a heartbeat echo from B")
    wait_for(lambda: beats.events[-1].get("echo") == "B" and time.monotonic() - beats.events[-1]["t"] > 0.05, 3,
             "just after B's echo", interval=0.01)
    t_drop = time.monotonic()
    drop_ports(w, list(beats.ports.values()))
    time.sleep(5.0)
    ended_now = [e for e in beats.events if "ended" in e]
    audit = [l.text for l in lines(agent, "stuck connection ended")]
    text = info(agent)
    assert ended_now == [] and audit == [], f"ended {[(e['ended'], e['error'], round(e['t'] - t_drop, 2)) for e in ended_now]}\n{text}"
    faults = agent.metrics().value(SUPPRESSED, pool="api", reason="local_fault")
    assert faults > 0, text
    print(f"\nheartbeats 0.6 s apart dropped 5 s at once: local_fault {faults:g}, 0 of 2 ended")


def test_a_lifted_local_fault_ends_nothing(world, tmp_path):
    """When the drop on this side of both heartbeat connections lifts after 7 s, each recovers at its
    own next retransmission (the kernel's backoff, seconds apart). The one still waiting is then the
    pool's only stuck connection, but it was held by the fault and its own timer has not shown its
    path broken since: it is not ended, and both answer again on their own connections. (Judged on
    each scan alone, the one still waiting was ended 3 runs of 4.)"""
    w = world()
    agent, beats, rule, faults = blackhole_both_heartbeats(w, tmp_path, 7.0)
    w.node.iptables("-D", *rule)
    t_lift = time.monotonic()
    answered = {}
    for name, (events, port) in beats.items():
        again = events.wait_event(lambda e: e["event"] == "failed" or (e["event"] == "echo" and e["port"] == port),
                                  15, after=t_lift)
        assert again and again["event"] == "echo", f"{name}'s heartbeat after the lift: {again}\n{info(agent)}"
        answered[name] = again["t"] - t_lift
    assert lines(agent, "stuck connection ended") == [], info(agent)
    print(f"\nlocal fault lifted after 7 s (local_fault {faults:g}): 0 of 2 ended, answered again on their own "
          f"connections {', '.join(f'{n} {t:.2f}s' for n, t in sorted(answered.items()))} after the lift")


def three_backends_two_heartbeats_dropped(w: World, tmp_path, third_beats: bool):
    """Pool A, B, C (stuck_after 2s); heartbeats to A and B, whose connections a rule on this side
    drops at once; toward C, three idle connections (``third_beats`` False) or a heartbeat that stays
    acknowledged. Returns the agent, the heartbeats, C's idle connections and when the drop began."""
    agent = w.start_agent(tmp_path, [{"name": "api", "backends": [AP, BP, CP], "stuck_after": "2s", "probe": STUCK_PROBE}])
    beats = heartbeats(w)
    idle_c: list[int] = []
    if third_beats:
        events_c = PeerProcess(w.node, "heartbeat", C, PORT)
        connected = events_c.wait_event("connected", 5)
        assert connected and events_c.wait_event("echo", 5), f"no heartbeat to C: {events_c.stderr()}"
        beats["C"] = (events_c, connected["port"])
    else:
        idle_c = w.client.connect(C, PORT, count=3)
        time.sleep(1.5)  # older than half of stuck_after: C has heard nothing lately
    t_drop = time.monotonic()
    drop_ports(w, [beats["A"][1], beats["B"][1]])
    return agent, beats, idle_c, t_drop


def test_an_idle_third_backend_does_not_hide_a_local_fault(world, tmp_path):
    """A backend shows health only by a connection that heard from its peer lately (simulation seed
    120,768,847). A's and B's heartbeats are dropped at once on this side; C holds only idle
    connections, which say nothing of its path. Every backend that shows anything is in trouble: a
    local fault, and for the 6 s it lasts nothing is ended (`local_fault` counted), C's idle
    connections still answer. (Counting an idle connection as health, both heartbeats were ended.)
    The trade, in the README: two paths blackholed at once beside an idle third are held."""
    w = world()
    agent, beats, idle_c, t_drop = three_backends_two_heartbeats_dropped(w, tmp_path, third_beats=False)
    time.sleep(6.0)
    text = info(agent)
    failures = {name: events.events_named("failed") for name, (events, _) in beats.items()}
    assert lines(agent, "stuck connection ended") == [], text
    assert failures == {"A": [], "B": []}, f"{failures}\n{text}"
    assert all(socket_open(w, port) for _, port in beats.values()), f"{w.node.run(['ss', '-tn']).stdout}\n{text}"
    faults = agent.metrics().value(SUPPRESSED, pool="api", reason="local_fault")
    assert faults > 0, text
    assert w.client.probe(idle_c) == ["ok"] * 3, text
    print(f"\nA's and B's heartbeats dropped 6 s beside an idle C: local_fault {faults:g}, 0 of 2 ended")


def test_a_third_backend_heard_from_lately_shows_two_blackholed_paths_are_theirs(world, tmp_path):
    """The other way: C's heartbeat stays acknowledged, so C's path works and the fault is on A's and
    B's: both heartbeats are ended (ECONNABORTED, each client reconnects and is answered), C's kept."""
    w = world()
    agent, beats, _, t_drop = three_backends_two_heartbeats_dropped(w, tmp_path, third_beats=True)
    text = ""
    took = {}
    for name in ("A", "B"):
        events, port = beats[name]
        failure = events.wait_event("failed", 8, after=t_drop)
        text = info(agent)
        assert failure and failure["error"] == "ECONNABORTED", f"{name}: {failure}\n{text}"
        again = events.wait_event(lambda e: e["event"] == "echo" and e["port"] != port, 5, after=t_drop)
        assert again, f"{name}: {events.events[-3:]}\n{text}"
        took[name] = failure["t"] - t_drop
    events_c, port_c = beats["C"]
    assert events_c.events_named("failed") == [], text
    assert events_c.wait_event(lambda e: e["event"] == "echo" and e["port"] == port_c, 2, after=time.monotonic()), text
    audit = lines(agent, "stuck connection ended")
    assert sorted(line.fields.get("backend") for line in audit) == [AP, BP], f"{[line.text for line in audit]}\n{text}"
    assert agent.metrics().value(SUPPRESSED, pool="api", reason="local_fault") == 0, text
    print(f"\nA's and B's heartbeats dropped beside C's, acknowledged: ended {took['A']:.2f}s and {took['B']:.2f}s "
          f"after; C's kept")


# ---------------------------------------------------------------------------------------------
# 4. A survivor answers now

SLOW = {"type": "tcp", "interval": "1s", "timeout": "500ms", "rise": 2, "fall": 2}


def syn_drop(w: World, address: str) -> list[str]:
    """The agent's namespace drops its own SYNs toward ``address``: a fault near the prober."""
    rule = ["OUTPUT", "-p", "tcp", "--syn", "-d", address, "-j", "DROP"]
    w.node.iptables("-I", *rule)
    return rule


def idle_everywhere(w: World) -> dict[str, list[int]]:
    return {address: w.client.connect(address, PORT, count=3) for address in (A, B, C)}


def test_a_fault_on_one_backends_path_only_is_reaped(world, tmp_path):
    """The other way: only A's probes fail (B and C keep answering): A is dead and its idle connections
    are ended (ECONNABORTED), B's and C's kept."""
    w = world()
    agent = w.start_agent(tmp_path, [{"name": "api", "backends": [AP, BP, CP], "probe": SLOW}])
    held = idle_everywhere(w)
    t_fault = time.monotonic()
    syn_drop(w, A)
    wait_aborted(w.client, agent, held[A], timeout=6)
    t_aborted = time.monotonic()
    reaps = reaps_of(agent, AP)
    metrics = agent.metrics()
    text = info(agent)
    assert reaps and reaps[0].fields.get("reason") == "dead", text
    assert destroyed(metrics, BP) == 0 and destroyed(metrics, CP) == 0, text
    assert w.client.probe(held[B] + held[C]) == ["ok"] * 6, text
    assert metrics.value(SUPPRESSED, pool="api", reason="all_backends_down") == 0, text
    print(f"\nonly A's probes dropped: its 3 idle connections aborted {t_aborted - t_fault:.2f}s after the fault")


# ---------------------------------------------------------------------------------------------
# A survivor answers now: a fault near the prober that reaches the backends a few hundred ms apart.


def test_a_prober_fault_reaching_the_backends_300_ms_apart_ends_nothing(world, tmp_path):
    """A survivor answers now: a fault near the prober reaches A, then B 300 ms later, then C 300 ms
    later, while the clients' connections are idle (no evidence either way). Every backend fails
    within 600 ms: no survivor answers now, nothing must be ended (`all_backends_down`), and every
    connection answers once the fault lifts."""
    w = world()
    agent = w.start_agent(tmp_path, [{"name": "api", "backends": [AP, BP, CP], "probe": SLOW}])
    held = idle_everywhere(w)
    t_fault = time.monotonic()
    rules = []
    for address in (A, B, C):
        rules.append(syn_drop(w, address))
        time.sleep(0.3)
    agent.wait_states({f"api/{b}": "dead" for b in (AP, BP, CP)}, timeout=8)
    t_all = time.monotonic()
    time.sleep(2.0)
    metrics = agent.metrics()
    states = {address: w.client.state(ids) for address, ids in held.items()}
    text = info(agent)
    dead_at = {l.fields.get("backend"): round(l.t - t_fault, 2) for l in lines(agent, "backend dead", t_fault)}

    assert agent.reaps() == [], f"dead at {dead_at}\n{text}"
    assert all(destroyed(metrics, b) == 0 for b in (AP, BP, CP)), text
    assert states == {address: ["ok"] * 3 for address in (A, B, C)}, f"{states}\n{text}"
    assert metrics.value(SUPPRESSED, pool="api", reason="all_backends_down") > 0, text
    for rule in rules:
        w.node.iptables("-D", *rule)
    answers = w.client.probe([i for ids in held.values() for i in ids])
    assert answers == ["ok"] * 9, f"{answers}\n{info(agent)}"
    print(f"\nprober fault at A, B +0.3 s, C +0.6 s: dead at {dead_at} s after, 0 reaped, all 9 connections answer")


def syn_counts(w: World) -> dict[str, int]:
    out = w.srv.run(["iptables", "-w", "-L", "INPUT", "-v", "-x", "-n"]).stdout
    counts = {}
    for line in out.splitlines():
        parts = line.split()
        target = next((p for p in parts if p in (A, B, C)), None)
        if target and "flags:0x17/0x02" in line and "DROP" not in parts:
            counts[target] = int(parts[0])
    return counts


def probe_times(w: World, addresses, seconds: float) -> dict[str, list[float]]:
    """When the agent's probe SYNs reached each backend (counting rules in srv, polled every ~10 ms)."""
    last = syn_counts(w)
    seen: dict[str, list[float]] = {a: [] for a in addresses}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now_counts = syn_counts(w)
        for address in addresses:
            if now_counts[address] != last[address]:
                seen[address].append(time.monotonic())
        last = now_counts
    return seen


def test_a_prober_fault_300_ms_apart_timed_against_the_probes_ends_nothing(world, tmp_path):
    """A survivor answers now, at the worst phase: the same fault near the prober, first X, then Y
    300 ms later, then Z 600 ms after X, with the order and the onset chosen from the probes' own
    times (1 s +-10 %): X's next probe is the first to fail (about 0.1 s after the onset), and Z's
    probe falls between X's failing one and Z's own fault. At X's verdict (two failures, about
    1.6 s after the onset) Z's latest probe succeeded and began after X's failures did; Z's next one
    is already in flight, unanswered for 0.4 s (its SYN is dropped). The fault is the prober's:
    every backend fails within 600 ms. Nothing must be ended."""
    w = world()
    agent = w.start_agent(tmp_path, [{"name": "api", "backends": [AP, BP, CP], "probe": SLOW}])
    held = idle_everywhere(w)
    for address in (A, B, C):
        w.srv.iptables("-I", "INPUT", "-d", address, "-p", "tcp", "--syn")      # counts, drops nothing
    seen = probe_times(w, (A, B, C), 2.2)
    last = {a: t[-1] for a, t in seen.items() if t}
    assert len(last) == 3, f"probes seen: {seen}"
    # X: the backend whose next probe is followed soonest (0.1-0.45 s) by another's: that one is Z.
    order = None
    for x in last:
        for z in last:
            if z != x and 0.1 <= (last[z] - last[x]) % 1.0 <= 0.45:
                if order is None or (last[z] - last[x]) % 1.0 < (last[order[2]] - last[order[0]]) % 1.0:
                    order = (x, next(a for a in last if a not in (x, z)), z)
    assert order, f"no two probes 0.1-0.45 s apart: {last}"
    x, y, z = order
    # Onset 0.85 s after X's latest probe seen: its next (0.9-1.1 s) is its first to fail.
    mark = probe_times(w, (x,), 1.2)[x]
    assert mark, f"no probe of {x} in 1.2 s"
    t_fault = mark[-1] + 0.85
    time.sleep(max(0.0, t_fault - time.monotonic()))
    rules = []
    for address in (x, y, z):
        rules.append(["OUTPUT", "-p", "tcp", "--syn", "-d", address, "-j", "DROP"])
        w.node.iptables("-I", *rules[-1])
        time.sleep(0.3)
    time.sleep(4.0)
    metrics = agent.metrics()
    states = {address: w.client.state(ids) for address, ids in held.items()}
    text = info(agent)
    dead_at = {l.fields.get("backend"): round(l.t - t_fault, 2) for l in lines(agent, "backend dead", t_fault)}
    gap = round((last[z] - last[x]) % 1.0, 3)
    assert agent.reaps() == [], f"order {order}, Z's probe {gap}s after X's, dead at {dead_at}\n{text}"
    assert states == {address: ["ok"] * 3 for address in (A, B, C)}, f"{states}\n{text}"
    assert metrics.value(SUPPRESSED, pool="api", reason="all_backends_down") > 0, text
    for rule in rules:
        w.node.iptables("-D", *rule)
    print(f"\nprober fault at {x}, {y} +0.3 s, {z} +0.6 s ({z}'s probe {gap}s after {x}'s): dead at {dead_at}, 0 reaped")
# ---------------------------------------------------------------------------------------------
# 5. A slow pass stops where it is once the backend answers (issue #22)

PAUSE = 5.0


def slow_pass_agent(w: World, c: Clients, tmp_path) -> Agent:
    """The pool reaps c1 and c2; every reap pass waits PAUSE seconds before it works in c2 (the
    failpoint a kernel test sets: a pass over a large table or many namespaces)."""
    path = tmp_path / "agent.yaml"
    path.write_text(pool_yaml(netns_pool([c.paths[0], c.mount]), listen=LISTEN))
    env = {**os.environ, "CONN_REAPER_FAILPOINT_SLOW_NETNS": f"{c.mount}={int(PAUSE * 1000)}"}
    w.agent = Agent(w.node, w.binary, ["--config", str(path)], listen=LISTEN, env=env)
    w.agent.wait_ready()
    w.agent.wait_states({f"api/{AP}": "up", f"api/{BP}": "up"})
    return w.agent


def first_pass_in_c1(w: World, c: Clients, agent: Agent) -> tuple[list[list[str]], float]:
    """A blackholed until its first pass has ended its connections in c1; the pass then waits in
    front of c2. Returns the blackhole's rules and when c1's were aborted."""
    rules = w.blackhole(A)
    wait_aborted(c.peers[0], agent, c.on_a[0], timeout=5)
    return rules, time.monotonic()


def test_a_slow_pass_stops_where_it_is_once_the_backend_answers(clients, tmp_path):
    """A dies; its first pass ends its 3 connections in c1, then waits 5 s in front of c2. A comes
    back meanwhile and answers; 3 more connections are made toward it from c2. When the pass goes
    on, it asks again, stops (`pass stopped`), and ends nothing in c2: the 3 made after the answer
    and the 3 from before all answer; no `reaped` line names c2. (Asked once, at its start, the pass
    ended all 6.)"""
    w, c = clients()
    agent = slow_pass_agent(w, c, tmp_path)
    rules, t_c1 = first_pass_in_c1(w, c, agent)
    for rule in rules:
        w.srv.iptables("-D", *rule)
    agent.wait_states({f"api/{AP}": "up"}, timeout=3)
    t_up = time.monotonic()
    assert t_up < t_c1 + PAUSE - 1, f"A up {t_up - t_c1:.2f}s after c1's reap: too late for the pass's pause\n{info(agent)}"
    late = c.peers[1].connect(A, PORT, count=3)
    stopped = agent.wait_line(lambda l: l.msg.startswith("pass stopped"), PAUSE + 2, since=t_c1)
    time.sleep(1.0)  # a dead cadence and more: nothing else comes
    text = info(agent)
    results = c.peers[1].probe(c.on_a[1] + late, timeout=5)
    assert results == ["ok"] * 6, f"{results}\n{text}"
    assert [r for r in agent.reaps(AP) if r.fields.get("netns") == c.mount] == [], text
    assert destroyed(agent.metrics(), AP) == 3, text
    assert stopped and stopped.fields.get("backend") == AP, text
    print(f"\nslow pass: A up {t_up - t_c1:.2f}s after its c1 reap, the pass stopped "
          f"{stopped.t - t_c1:.2f}s after it; 0 of 6 connections in c2 ended (3 made after the answer)")


def test_a_slow_pass_toward_a_backend_that_stays_dead_goes_on(clients, tmp_path):
    """The other way: A stays dead. After its 5 s pause, the pass goes on into c2 and ends its 3
    connections there (ECONNABORTED); B's answer."""
    w, c = clients()
    agent = slow_pass_agent(w, c, tmp_path)
    rules, t_c1 = first_pass_in_c1(w, c, agent)
    wait_aborted(c.peers[1], agent, c.on_a[1], timeout=PAUSE + 3)
    t_c2 = time.monotonic()
    text = info(agent)
    assert t_c2 - t_c1 >= PAUSE - 0.5, f"c2 reaped {t_c2 - t_c1:.2f}s after c1: the pause did not hold\n{text}"
    assert [r for r in agent.reaps(AP) if r.fields.get("netns") == c.mount], text
    assert not [l for l in agent.log() if l.msg.startswith("pass stopped")], text
    assert [peer.probe(b) for peer, b in zip(c.peers, c.on_b)] == [["ok"], ["ok"]], text
    print(f"\nslow pass toward a dead A: c2's 3 connections ended {t_c2 - t_c1:.2f}s after c1's")


# ---------------------------------------------------------------------------------------------
# 6. A rebalance ends only the balancer's connections (issue #22)

#: The balancer, as far as the kernel can tell: idle connections spread over A and B, made as nobody.
BALANCER = r"""
import socket, sys
held = [socket.create_connection((address, int(sys.argv[1]))) for address in sys.argv[2:] for _ in range(15)]
print("ready", flush=True)
sys.stdin.read()
"""
NOBODY = 65534


def balancer_beside_a_local_client(w: World, tmp_path, owner: str | None) -> tuple[Agent, list[int], float]:
    """A local client (root) holds 20 idle connections to A, made first: the oldest, the quietest.
    Then the balancer (nobody) holds 15 to A and 15 to B. C dies and comes back; once its hold-down
    passed, the rebalance moves connections to it. Returns the agent, the local client's
    connections and when C was up again."""
    local = w.client.connect(A, PORT, count=20)
    time.sleep(2.0)
    balancer = w.node.popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "python3", "-c", BALANCER,
                             str(PORT), A, B], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert balancer.stdout.readline().strip() == b"ready"
    pool = {"name": "api", "backends": [AP, BP, CP], "probe": FAST, "rebalance": True}
    if owner:
        pool["rebalance_owner"] = owner
    agent = w.start_agent(tmp_path, [pool])
    rules = w.blackhole(C)
    agent.wait_states({f"api/{CP}": "dead"}, timeout=5)
    for rule in rules:
        w.srv.iptables("-D", *rule)
    agent.wait_states({f"api/{CP}": "up"}, timeout=5)
    return agent, local, time.monotonic()


def rebalance_closes(agent: Agent, count: int, timeout: float) -> list:
    wait_for(lambda: len(agent.find("rebalanced connection ended")) >= count, timeout, f"{count} rebalance closes")
    return agent.find("rebalanced connection ended")


def test_a_rebalance_ends_only_the_balancers_connections(world, tmp_path):
    """By default a rebalance counts and moves the connections of the owner (uid, cgroup) whose
    connections reach the most backends: the balancer (nobody, on A and B), not the local client (root)
    that talks to A alone, though it holds more there and quieter ones. After 6 closes every one of the
    local client's 20 connections answers; the `rebalance started` line names the owner and the 20
    left alone."""
    w = world()
    agent, local, t_up = balancer_beside_a_local_client(w, tmp_path, owner=None)
    closes = rebalance_closes(agent, 6, 25)
    text = info(agent)
    states = w.client.probe(local)
    assert states == ["ok"] * 20, f"{states}\n{text}"
    started = agent.find("rebalance started: connections are spread outside the tolerance")
    assert started and started[0].fields.get("owner", "").startswith(f"uid {NOBODY}"), text
    assert started[0].fields.get("others_left_alone") == "20", text
    print(f"\nrebalance beside a local client: {len(closes)} closes from +{closes[0].t - t_up:.1f} s after C's return, "
          f"owner '{started[0].fields.get('owner')}', 0 of the local client's 20 ended")


def test_a_rebalance_of_any_owner_ends_the_local_clients_connections(world, tmp_path):
    """The other way: `rebalance_owner: any` counts every connection toward the pool, and the local
    client's, the quietest on the fullest backend, go first: within 4 closes at least one of them is
    ended (ECONNABORTED)."""
    w = world()
    agent, local, t_up = balancer_beside_a_local_client(w, tmp_path, owner="any")
    rebalance_closes(agent, 4, 25)
    states = w.client.state(local)
    assert states.count("ECONNABORTED") >= 1, f"{states}\n{info(agent)}"
    print(f"\nrebalance_owner any: {states.count('ECONNABORTED')} of the local client's 20 ended")
