"""No harm from what a probe cannot know: three rules of the agent, each proved both ways against the
real kernel (the living kept, the dead still reaped).

The lab: the agent's namespace ``node`` (10.243.0.1, where the agent runs, probes and reaps, and
where the clients' connections live) and ``srv`` (backends X 10.243.0.2, Y 10.243.0.3 and Z
10.243.0.4, an echo server on the service port 21080 of each, health listeners on 21081). tcp probes at interval 200ms,
timeout 150ms, rise 2, fall 2. The clients' connections to X are idle on purpose: an idle connection
gives the agent no sign of life, so the verdict comes from the probes alone and a wrong one ends them
(the owner's next recv: ECONNABORTED). Kept means they still round-trip a byte afterwards.

1. The prober's own fault: with the node's local ports toward X exhausted (a two-port
   ``ip_local_port_range`` in ``node`` and two idle connections to X holding both), the probe's
   connect fails here with EADDRNOTAVAIL before a SYN leaves. No verdict: X stays ``up``, nothing is
   reaped, ``reaps_suppressed_total{reason="prober_fault"}`` counts, one warning. Other way: X
   blackholed with a port still free: dead, reaped.
2. A refused health port (``probe: {port: 21081}``) is asked again on the service port: while that
   port takes connections X is ``unhealthy`` (its health endpoint is gone), not dead, and with
   ``drain_timeout: 0s`` its connections stay. Other way: the service port refuses (RST) or drops
   new SYNs too: dead, reaped.
3. One endpoint, one verdict: X in pool a = {X, Y} and pool b = {X} (or {X, Z}, Z already dead).
   X blackholed: pool b has no survivor, so nothing of X is ended, neither its connections nor a
   new connect toward it (``shared_backend`` counted in a, ``all_backends_down`` in b); its
   connections work again when the blackhole lifts. Other way: b = {X, Y} too: X is reaped, and a
   new connect toward it is aborted.
"""

from __future__ import annotations

import errno
import socket
import struct
import time

import pytest

from lab.agent import Agent, pool_yaml
from lab.netns import in_netns, wait_for
from lab.traffic import PeerError

NODE, X, Y, Z = "10.243.0.1", "10.243.0.2", "10.243.0.3", "10.243.0.4"
PORT, HEALTH = 21080, 21081
XP, YP, ZP = f"{X}:{PORT}", f"{Y}:{PORT}", f"{Z}:{PORT}"
LISTEN = ("127.0.0.1", 21747)
NARROW = (21990, 21991)          # the node's local port range while ports run out (two ports)
PROBE = {"type": "tcp", "interval": "200ms", "timeout": "150ms", "rise": 2, "fall": 2}
HOLD = 3.0                       # how long a rule must hold (15 probe intervals; fall is 2)
SUPPRESSED = "conn_reaper_reaps_suppressed_total"


class World:
    """The two namespaces, the server's echo listeners and the node's client peer."""

    def __init__(self, lab, health: bool = False) -> None:
        self.node, self.srv = lab.namespace("node"), lab.namespace("srv")
        lab.link(self.node, self.srv, [f"{NODE}/24"], [f"{X}/24", f"{Y}/24", f"{Z}/24"])
        self.server = self.srv.peer()
        for address in (X, Y, Z):
            self.server.listen("tcp", address, PORT)
        if health:
            self.server.listen("tcp", Y, HEALTH)
            self.health_x = self.srv.peer()    # X's health endpoint, a process of its own: stopped, its port refuses
            self.health_x.listen("tcp", X, HEALTH)
        self.client = self.node.peer()
        self.agent: Agent | None = None

    def start_agent(self, tmp_path, pools: list[dict]) -> Agent:
        path = tmp_path / "agent.yaml"
        path.write_text(pool_yaml(pools, listen=LISTEN))
        self.agent = Agent(self.node, self.binary, ["--config", str(path)], listen=LISTEN)
        self.agent.wait_ready()
        self.agent.wait_states({f"{pool['name']}/{backend}": "up" for pool in pools for backend in pool["backends"]})
        return self.agent

    def blackhole(self, address: str) -> list[str]:
        """Everything to ``address`` vanishes (a silent death); returns the rule, to delete it again."""
        rule = ["INPUT", "-d", address, "-j", "DROP"]
        self.srv.iptables("-I", *rule)
        return rule

    def port_range(self, low: int, high: int) -> tuple[int, int]:
        """Sets the node's local port range; returns the one it replaces."""
        key = "net.ipv4.ip_local_port_range"
        old = tuple(map(int, self.node.run(["sysctl", "-n", key]).stdout.split()))
        self.node.run(["sysctl", "-q", "-w", f"{key}={low} {high}"])
        return old

    def hold_ports(self, host: str, port: int, count: int) -> list[int]:
        """``count`` idle connections from the node to host:port, one at a time: with the range
        narrowed, a probe of the agent may hold a port for the instant of its handshake."""
        ids: list[int] = []
        for _ in range(count):
            for attempt in range(10):
                try:
                    ids.append(self.client.connect_one(host, port))
                    break
                except PeerError:
                    if attempt == 9:
                        raise
                    time.sleep(0.02)
        return ids

    def connect_errno(self, host: str, port: int) -> int:
        """A fresh connect from the node, as the agent's probe makes it; 0 or its errno. Closed with
        an RST, as the probe closes: no TIME_WAIT left to take a port."""
        def attempt() -> int:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.settimeout(1.0)
            try:
                sock.connect((host, port))
                return 0
            except OSError as error:
                return error.errno or -1
            finally:
                sock.close()
        return in_netns(self.node.name, attempt)


@pytest.fixture
def world(lab, reaper_binary):
    def build(**options) -> World:
        built = World(lab, **options)
        built.binary = reaper_binary
        return built
    return build


def info(agent: Agent) -> str:
    return agent.log_text(60)


def states_during(agent: Agent, keys: list[str], seconds: float) -> dict[str, set[str]]:
    """Every state /status showed for ``keys`` (``pool/IP:PORT``), sampled for ``seconds``."""
    seen: dict[str, set[str]] = {key: set() for key in keys}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        states = agent.backend_states()
        for key in keys:
            seen[key].add(states.get(key))
        time.sleep(0.1)
    return seen


def lines(agent: Agent, prefix: str, since: float = 0.0, **fields) -> list:
    return [line for line in agent.log() if line.t >= since and line.msg.startswith(prefix)
            and all(line.fields.get(k) == v for k, v in fields.items())]


def wait_aborted(world: World, ids: list[int], timeout: float = 5.0) -> list[str]:
    """Waits until every socket's owner sees ECONNABORTED (the agent destroyed it); AssertionError otherwise."""
    try:
        return wait_for(lambda: (s := world.client.state(ids)) == ["ECONNABORTED"] * len(ids) and s, timeout,
                        f"ECONNABORTED on {ids}", interval=0.1)
    except AssertionError as error:
        raise AssertionError(f"{error}: now {world.client.state(ids)}\n{info(world.agent)}") from None


def reaps_of(agent: Agent, backend: str, timeout: float = 2.0) -> list:
    """The ``reaped`` lines of ``backend``, once the first is logged (its line follows the destroys)."""
    agent.wait_line(lambda l: l.msg == "reaped" and l.fields.get("backend") == backend, timeout)
    return agent.reaps(backend)


def assert_nothing_of(agent: Agent, backend: str, metrics) -> None:
    assert agent.reaps(backend) == [], info(agent)
    assert metrics.value("conn_reaper_sockets_destroyed_total", backend=backend) == 0, info(agent)


# ---------------------------------------------------------------------------------------------
# 1. The prober's own fault makes no verdict


def test_exhausted_local_ports_toward_a_live_backend_make_no_verdict(world, tmp_path):
    w = world()
    agent = w.start_agent(tmp_path, [{"name": "api", "backends": [XP, YP], "probe": PROBE}])
    on_y = w.client.connect(Y, PORT)
    wide = w.port_range(*NARROW)
    held = w.hold_ports(X, PORT, 2)                 # both local ports toward X: taken
    assert w.connect_errno(X, PORT) == errno.EADDRNOTAVAIL, "the node still has a port toward X"
    assert w.connect_errno(Y, PORT) == 0, "the node has no port toward Y either"
    before = agent.metrics()
    t0 = time.monotonic()

    seen = states_during(agent, [f"api/{XP}", f"api/{YP}"], HOLD)
    metrics = agent.metrics()
    failed = (metrics.value("conn_reaper_probes_total", pool="api", backend=XP, result="failure")
              - before.value("conn_reaper_probes_total", pool="api", backend=XP, result="failure"))
    faults = metrics.value(SUPPRESSED, pool="api", reason="prober_fault")
    warned = lines(agent, "probe failed here, not at the backend", pool="api", backend=XP)
    text = info(agent)

    # No verdict: up all along, never unhealthy or dead, nothing ended.
    assert seen == {f"api/{XP}": {"up"}, f"api/{YP}": {"up"}}, f"{seen}\n{text}"
    for to in ("unhealthy", "dead"):
        assert metrics.value("conn_reaper_backend_transitions_total", pool="api", backend=XP, to=to) == 0, text
    assert lines(agent, "backend ", backend=XP, since=t0) == [], text
    assert_nothing_of(agent, XP, metrics)
    assert metrics.value(SUPPRESSED, pool="api", reason="all_backends_down") == 0, text
    # The connections holding the ports are whole and carry data.
    assert w.client.state(held) == ["ok", "ok"], text
    assert w.client.probe(held + on_y) == ["ok"] * 3, text
    # Its probes failed, here: counted as failures and as prober faults, one warning.
    assert failed >= HOLD / 0.2 / 2, f"{failed} failed probes of X in {HOLD}s\n{text}"
    assert faults >= failed - 1 and faults > 0, f"prober_fault {faults}, failed probes {failed}\n{text}"
    assert len(warned) == 1 and warned[0].fields.get("reason") == "prober_fault", f"{[l.text for l in warned]}\n{text}"
    assert warned[0].t >= t0 - 0.5, text

    # Ports back: its probes get through again (no state change was needed).
    w.port_range(*wide)
    successes = metrics.value("conn_reaper_probes_total", pool="api", backend=XP, result="success")
    wait_for(lambda: agent.metrics().value("conn_reaper_probes_total", pool="api", backend=XP, result="success")
             >= successes + 2, 3, "X's probes to succeed again")
    assert agent.backend_states()[f"api/{XP}"] == "up"
    print(f"\nports toward X exhausted {HOLD:g}s: {failed:g} probes failed here, prober_fault {faults:g}, "
          f"X up throughout, 0 reaped")


def test_a_backend_that_dies_with_a_local_port_free_is_reaped(world, tmp_path):
    w = world()
    agent = w.start_agent(tmp_path, [{"name": "api", "backends": [XP, YP], "probe": PROBE}])
    on_y = w.client.connect(Y, PORT)
    w.port_range(*NARROW)
    held = w.hold_ports(X, PORT, 1)                 # one of the two ports toward X: the probe has the other
    assert w.connect_errno(X, PORT) == 0, "no port left toward X"

    t_cut = time.monotonic()
    w.blackhole(X)
    wait_aborted(w, held)
    t_aborted = time.monotonic()
    reaps = reaps_of(agent, XP)
    metrics = agent.metrics()
    text = info(agent)

    assert reaps and reaps[0].fields.get("reason") == "dead", text
    dead = lines(agent, "backend dead", backend=XP)
    assert len(dead) == 1 and dead[0].fields.get("failure") == "unreachable", text
    assert metrics.value(SUPPRESSED, pool="api", reason="prober_fault") == 0, text
    assert metrics.value("conn_reaper_sockets_destroyed_total", pool="api", backend=XP) >= 1, text
    assert_nothing_of(agent, YP, metrics)
    assert w.client.probe(on_y) == ["ok"], text
    print(f"\nX blackholed with a port free: dead, its connection aborted {t_aborted - t_cut:.2f}s after the cut")


# ---------------------------------------------------------------------------------------------
# 2. A refused health port asks the service port


HEALTH_PROBE = {**PROBE, "port": HEALTH}


def health_pool(**keys) -> list[dict]:
    return [{"name": "svc", "backends": [XP, YP], "probe": HEALTH_PROBE, **keys}]


def test_a_refused_health_port_while_the_service_port_answers_is_unhealthy_not_dead(world, tmp_path):
    w = world(health=True)
    agent = w.start_agent(tmp_path, health_pool(drain_timeout="0s"))
    held = w.client.connect(X, PORT, count=3)
    on_y = w.client.connect(Y, PORT)

    t_gone = time.monotonic()
    w.health_x.stop()                               # X's health endpoint is gone; its service is not
    assert w.connect_errno(X, HEALTH) == errno.ECONNREFUSED
    unhealthy = agent.wait_line(lambda l: l.msg == "backend unhealthy" and l.fields.get("backend") == XP, 3, t_gone)
    assert unhealthy, f"X not unhealthy within 3 s\n{info(agent)}"
    seen = states_during(agent, [f"svc/{XP}", f"svc/{YP}"], HOLD)
    metrics = agent.metrics()
    status = next(b for p in agent.status()["pools"] for b in p["backends"] if b["address"] == XP)
    text = info(agent)

    assert unhealthy.fields.get("failure") == "unhealthy", f"{unhealthy.text}\n{text}"
    assert seen == {f"svc/{XP}": {"unhealthy"}, f"svc/{YP}": {"up"}}, f"{seen}\n{text}"
    assert status["last_failure"] == "unhealthy", f"{status}\n{text}"
    assert "the service port answers" in status.get("last_failure_detail", ""), f"{status}\n{text}"
    assert metrics.value("conn_reaper_backend_transitions_total", pool="svc", backend=XP, to="dead") == 0, text
    assert lines(agent, "backend dead", backend=XP) == [], text
    assert_nothing_of(agent, XP, metrics)
    # Its service connections were never ended and carry data.
    assert w.client.state(held) == ["ok"] * 3, text
    fresh = w.client.connect(X, PORT)
    time.sleep(0.5)
    assert w.client.probe(held + fresh + on_y) == ["ok"] * 5, text
    assert agent.reaps(XP) == [], info(agent)
    print(f"\nX's health port refused, service port answering: unhealthy "
          f"{unhealthy.t - t_gone:.2f}s after, for {HOLD:g}s, 0 of 3 connections ended")


@pytest.mark.parametrize("service", ["refuses", "silent"])
def test_a_refused_health_port_and_a_dead_service_port_is_dead_and_reaped(service, world, tmp_path):
    w = world(health=True)
    agent = w.start_agent(tmp_path, health_pool(drain_timeout="0s"))
    held = w.client.connect(X, PORT, count=3)       # idle: they receive nothing
    on_y = w.client.connect(Y, PORT)

    t_cut = time.monotonic()
    # New connections to the service port end in an RST or in silence; the established ones are left be.
    target = ["-j", "REJECT", "--reject-with", "tcp-reset"] if service == "refuses" else ["-j", "DROP"]
    w.srv.iptables("-I", "INPUT", "-d", X, "-p", "tcp", "--dport", str(PORT), "--syn", *target)
    w.health_x.stop()
    wait_aborted(w, held)
    t_aborted = time.monotonic()
    reaps = reaps_of(agent, XP)
    metrics = agent.metrics()
    text = info(agent)

    dead = lines(agent, "backend dead", backend=XP)
    assert len(dead) == 1 and dead[0].fields.get("failure") == "refused", text
    assert "the service port: " in dead[0].fields.get("probe", ""), f"the service port was not asked\n{text}"
    assert reaps and reaps[0].fields.get("reason") == "dead", text
    assert metrics.value("conn_reaper_sockets_destroyed_total", pool="svc", backend=XP) >= 3, text
    assert_nothing_of(agent, YP, metrics)
    assert w.client.probe(on_y) == ["ok"], text
    print(f"\nhealth port refused, service port {service}: dead, 3 connections aborted "
          f"{t_aborted - t_cut:.2f}s after")


# ---------------------------------------------------------------------------------------------
# 3. One endpoint, one verdict


@pytest.mark.parametrize("other", ["alone", "with-dead-z"])
def test_a_shared_backend_is_not_reaped_while_another_pool_has_no_survivor(other, world, tmp_path):
    w = world()
    b = [XP] if other == "alone" else [XP, ZP]
    agent = w.start_agent(tmp_path, [{"name": "a", "backends": [XP, YP], "probe": PROBE},
                                     {"name": "b", "backends": b, "probe": PROBE}])
    held = w.client.connect(X, PORT, count=3)
    on_y = w.client.connect(Y, PORT)

    if other == "with-dead-z":                      # b's other backend died first: b has no survivor
        w.blackhole(Z)
        agent.wait_states({f"b/{ZP}": "dead"}, timeout=5)
    t_cut = time.monotonic()
    rule = w.blackhole(X)
    agent.wait_states({f"a/{XP}": "dead", f"b/{XP}": "dead"}, timeout=5)
    t_dead = time.monotonic()
    time.sleep(HOLD - 1.0)
    # A new connect toward X now hangs in SYN_SENT: the walk of new flows toward a dead backend runs
    # every 150 ms, and must leave it too.
    connect = w.client.connect_outcome(X, PORT, timeout=1.0)
    metrics = agent.metrics()
    states = w.client.state(held)
    text = info(agent)

    assert_nothing_of(agent, XP, metrics)
    assert states == ["ok"] * 3, f"{states}\n{text}"
    assert connect[0] == "pending", f"a new connect toward X: {connect}\n{text}"
    assert metrics.value(SUPPRESSED, pool="a", reason="shared_backend") > 0, text
    assert metrics.value(SUPPRESSED, pool="b", reason="all_backends_down") > 0, text
    held_lines = lines(agent, "reap held", pool="a", backend=XP, reason="shared_backend")
    assert len(held_lines) == 1, f"{[l.text for l in held_lines]}\n{text}"
    assert agent.backend_states()[f"a/{YP}"] == "up", text

    # The blackhole lifts: the connections it held were never ended and carry data again.
    w.srv.iptables("-D", *rule)
    assert w.client.probe(held + on_y, timeout=5) == ["ok"] * 4, info(agent)
    agent.wait_states({f"a/{XP}": "up", f"b/{XP}": "up"}, timeout=5)
    assert agent.reaps(XP) == [], info(agent)
    print(f"\nX dead in a (with Y) and b ({other}) {t_dead - t_cut:.2f}s after the cut, held {HOLD:g}s: "
          f"0 reaped; shared_backend {metrics.value(SUPPRESSED, pool='a', reason='shared_backend'):g}, "
          f"all_backends_down {metrics.value(SUPPRESSED, pool='b', reason='all_backends_down'):g}")


def test_a_shared_backend_is_reaped_when_every_pool_has_a_survivor(world, tmp_path):
    w = world()
    agent = w.start_agent(tmp_path, [{"name": "a", "backends": [XP, YP], "probe": PROBE},
                                     {"name": "b", "backends": [XP, YP], "probe": PROBE}])
    held = w.client.connect(X, PORT, count=3)
    on_y = w.client.connect(Y, PORT)

    t_cut = time.monotonic()
    w.blackhole(X)
    wait_aborted(w, held)
    t_aborted = time.monotonic()
    reaps = reaps_of(agent, XP)
    metrics = agent.metrics()
    text = info(agent)

    assert reaps and reaps[0].fields.get("reason") == "dead", text
    assert sum(int(r.fields["sockets"]) for r in reaps) >= 3, text
    connect = w.client.connect_outcome(X, PORT, timeout=1.0)
    assert connect[0] == "ECONNABORTED" and connect[1] < 0.5, f"a new connect toward X: {connect}\n{text}"
    for pool in ("a", "b"):
        assert agent.backend_states()[f"{pool}/{XP}"] == "dead", text
        assert metrics.value(SUPPRESSED, pool=pool, reason="all_backends_down") == 0, text
    assert_nothing_of(agent, YP, metrics)
    assert w.client.probe(on_y) == ["ok"], text
    print(f"\nX dead in a and b, both with Y: its 3 connections aborted {t_aborted - t_cut:.2f}s after the cut")


# ---------------------------------------------------------------------------------------------
# 1 and 2 together (fails on main at 4bf3835: a product bug, see the commit message)


def test_a_refused_health_port_with_no_local_port_toward_the_service_port_makes_no_dead_verdict(world, tmp_path):
    """X's health port refuses, and the node's ports toward X's service port are exhausted (where the
    clients' connections go, the likely place to run out): the service-port check's connect fails here
    with EADDRNOTAVAIL. That is the prober's fault, neither a refusal nor silence of the service port:
    no dead verdict, the connections holding the ports kept."""
    w = world(health=True)
    agent = w.start_agent(tmp_path, health_pool(drain_timeout="0s"))
    w.port_range(*NARROW)
    held = w.hold_ports(X, PORT, 2)
    assert w.connect_errno(X, PORT) == errno.EADDRNOTAVAIL, "the node still has a port toward X's service port"
    assert w.connect_errno(X, HEALTH) == 0, "the node has no port toward X's health port either"

    w.health_x.stop()
    seen = states_during(agent, [f"svc/{XP}"], HOLD)
    metrics = agent.metrics()
    states = w.client.state(held)
    text = info(agent)

    assert "dead" not in seen[f"svc/{XP}"], f"{seen}\n{text}"
    assert lines(agent, "backend dead", backend=XP) == [], text
    assert_nothing_of(agent, XP, metrics)
    assert states == ["ok", "ok"], f"{states}\n{text}"
    assert w.client.probe(held) == ["ok", "ok"], text
    print(f"\nhealth port refused, no local port toward the service port: {seen}, prober_fault "
          f"{metrics.value(SUPPRESSED, pool='svc', reason='prober_fault'):g}, 0 reaped")
