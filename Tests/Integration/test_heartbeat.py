"""The heartbeat: one idle connection of the agent's own to each backend, probed by the kernel's
keepalive every second (TCP_KEEPIDLE 1 s, TCP_KEEPINTVL 1 s, TCP_USER_TIMEOUT 1 s), whose ETIMEDOUT is
an early signal. Watches that only receive and idle connections never retransmit, so without it a
silent death waits for interval x fall.

The lab: the agent's namespace ``hbnode`` (10.248.0.1; the clients and their connections live there)
and ``hbsrv`` (backends A 10.248.0.2 and B 10.248.0.3 on port 24080, one selector-loop server that
echoes a connection that said ``echo`` and writes a line every 200 ms to one that said ``watch``).
Each client holds 3 idle connections (``echo``, then nothing for the test's length) and 3 watches
(only receiving) per backend. Probes at interval 2s, timeout 1s, fall 3 (HAProxy-like).

1. A blackholed (iptables DROP both ways in hbsrv: no FIN, no RST), heartbeat off (the control) and
   on: the time from the blackhole to ``backend dead`` and to A's connections ended (ECONNABORTED on
   the owner's side); only A's end, B's keep flowing. The heartbeat's version is faster by a second.
2. A live A paused 0.5 s and 0.9 s (dropped, then let through): nothing ended, every connection still
   carries data afterwards.
3. A heartbeat the backend closes (A's listener restarts: silent connections closed with a FIN, the
   port refused for 1.5 s) or resets (B drops its silent connections with an RST): no dead verdict,
   nothing ended, each failure counted with its cause, both heartbeats up again.
4. A reload that turns ``heartbeat`` off closes both (no keepalive socket left, no status, no gauge);
   one that turns it on makes them again.

Addresses 10.248.0.0/16, ports 24000-24999.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass

import pytest

from lab.agent import Agent, pool_yaml
from lab.netns import wait_for

NODE, A, B = "10.248.0.1", "10.248.0.2", "10.248.0.3"
APP, APP_GATEWAY = "10.248.1.1", "10.248.1.2"
PORT = 24080
AP, BP = f"{A}:{PORT}", f"{B}:{PORT}"
LISTEN = ("127.0.0.1", 24747)
HAPROXY_LIKE = {"type": "tcp", "interval": "2s", "timeout": "1s", "rise": 2, "fall": 3}
PER_KIND = 3

#: Backends A and B: `echo` connections echo, `watch` ones get a line every 200 ms. Commands on stdin:
#: `restart NAME SECONDS` (listener closed, its silent connections closed with a FIN, reopened after),
#: `drop NAME rst|fin` (its connections that never spoke closed that way).
SERVER = r"""
import json, selectors, socket, struct, sys, time
port = int(sys.argv[1]); names = dict(pair.split("=") for pair in sys.argv[2:])   # address -> name
sel = selectors.DefaultSelector(); listeners = {}; conns = {}; reopen = {}
def listen(address):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port)); s.listen(512); s.setblocking(False)
    listeners[names[address]] = s; sel.register(s, selectors.EVENT_READ, ("listener", address))
def close(conn, rst=False):
    if rst: conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sel.unregister(conn); conns.pop(conn, None); conn.close()
def silent(name):
    return [c for c, info in conns.items() if info["name"] == name and info["mode"] is None]
for address in names: listen(address)
sel.register(sys.stdin, selectors.EVENT_READ, ("stdin", None))
print("ready", flush=True)
next_line = time.monotonic(); seq = 0
while True:
    for key, _ in sel.select(0.05):
        kind, data = key.data
        if kind == "listener":
            try: conn, _ = key.fileobj.accept()
            except OSError: continue
            conn.setblocking(False); conns[conn] = {"name": names[data], "mode": None, "buf": b""}
            sel.register(conn, selectors.EVENT_READ, ("conn", None))
        elif kind == "stdin":
            words = sys.stdin.readline().split()
            if words[0] == "restart":
                s = listeners.pop(words[1]); sel.unregister(s); s.close()
                for c in silent(words[1]): close(c)
                address = next(a for a, n in names.items() if n == words[1])
                reopen[address] = time.monotonic() + float(words[2])
            elif words[0] == "drop":
                for c in silent(words[1]): close(c, rst=words[2] == "rst")
            print("done", flush=True)
        else:
            conn = key.fileobj
            try: chunk = conn.recv(4096)
            except OSError: chunk = b""
            if not chunk: close(conn); continue
            info = conns[conn]
            if info["mode"] is None:
                info["buf"] += chunk
                if b"\n" not in info["buf"]: continue
                line, _, chunk = info["buf"].partition(b"\n"); info["mode"] = line.decode()
            if info["mode"] == "echo" and chunk: conn.send(chunk)
    now = time.monotonic()
    for address, at in list(reopen.items()):
        if now >= at: del reopen[address]; listen(address)
    if now >= next_line:
        next_line += 0.2; seq += 1
        for conn, info in list(conns.items()):
            if info["mode"] == "watch":
                try: conn.send(f"{info['name']} {seq}\n".encode())
                except OSError: pass
"""

#: The clients: per backend, PER_KIND idle (`echo`, then silent) and PER_KIND watches. Commands:
#: `status` (a JSON line: each connection's backend, kind, age of its last data, error and its time),
#: `ping` (each idle connection writes a line its backend echoes).
CLIENT = r"""
import errno, json, selectors, socket, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2]); sel = selectors.DefaultSelector(); conns = []
for address in sys.argv[3:]:
    for kind in ("echo", "watch"):
        for _ in range(count):
            s = socket.create_connection((address, port), timeout=5); s.sendall(f"{kind}\n".encode()); s.setblocking(False)
            c = {"backend": address, "kind": kind, "sock": s, "last": time.time(), "error": None, "error_t": None}
            conns.append(c); sel.register(s, selectors.EVENT_READ, c)
sel.register(sys.stdin, selectors.EVENT_READ, None)
print("ready", flush=True)
while True:
    for key, _ in sel.select(1.0):
        c = key.data
        if c is None:
            word = sys.stdin.readline().strip()
            if word == "ping":
                for c in conns:
                    if c["kind"] == "echo" and c["error"] is None: c["sock"].send(b"ping\n")
                print("{}", flush=True)
            elif word == "status":
                now = time.time()
                print(json.dumps([{k: (round(now - v, 3) if k == "last" else v) for k, v in c.items() if k != "sock"} for c in conns]), flush=True)
            continue
        try:
            chunk = c["sock"].recv(4096)
            if chunk: c["last"] = time.time(); continue
            c["error"] = "eof"
        except OSError as e:
            c["error"] = errno.errorcode.get(e.errno, str(e.errno))
        c["error_t"] = time.time(); sel.unregister(c["sock"])
"""


class Line:
    """A helper process speaking one line in, one line out."""

    def __init__(self, namespace, script: str, *args: str) -> None:
        self.process = namespace.popen(["python3", "-u", "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True)
        assert self.process.stdout.readline().strip() == "ready"

    def ask(self, command: str):
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline()) if command in ("status", "ping") else self.process.stdout.readline()

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@dataclass
class Figures:
    dead_after: float
    ended_after: float
    detected_by: str
    signal_after: float | None


class World:
    def __init__(self, lab, binary: str, tmp_path) -> None:
        self.lab, self.binary, self.tmp_path = lab, binary, tmp_path
        self.node, self.srv = lab.namespace("hbnode"), lab.namespace("hbsrv")
        lab.link(self.node, self.srv, [f"{NODE}/24"], [f"{A}/24", f"{B}/24"])
        self.server = Line(self.srv, SERVER, str(PORT), f"{A}=A", f"{B}=B")
        self.agent: Agent | None = None
        self.client: Line | None = None
        self.app = None       # the balancer's own namespace, when the pool names one (`netns:`)

    def start(self, heartbeat: bool = True, elsewhere: bool = False) -> None:
        if elsewhere and self.app is None:
            self.app = self.lab.namespace("hbapp")
            self.lab.link(self.app, self.srv, [f"{APP}/24"], [f"{APP_GATEWAY}/24"])
            self.app.add_route(f"{A}/32", via=APP_GATEWAY)
            self.app.add_route(f"{B}/32", via=APP_GATEWAY)
        self.client = Line(self.app if elsewhere else self.node, CLIENT, str(PORT), str(PER_KIND), A, B)
        self.write_config(heartbeat, elsewhere)
        self.agent = Agent(self.node, self.binary, ["--config", str(self.config)], listen=LISTEN)
        self.agent.wait_ready()
        self.agent.wait_states({f"watch/{AP}": "up", f"watch/{BP}": "up"}, timeout=15)
        if heartbeat:
            wait_for(lambda: self.heartbeats() == {AP: "up", BP: "up"}, 5, "both heartbeats up")
        else:
            assert self.heartbeats() == {AP: None, BP: None}

    def write_config(self, heartbeat: bool, elsewhere: bool = False) -> None:
        self.config = self.tmp_path / "agent.yaml"
        pool = {"name": "watch", "backends": [AP, BP], "probe": HAPROXY_LIKE, "heartbeat": heartbeat}
        if elsewhere:
            pool["netns"] = [f"/run/netns/{self.app.name}"]
        self.config.write_text(pool_yaml([pool], listen=LISTEN))

    def keepalive_sockets(self, backend: str) -> int:
        """Established sockets toward ``backend`` with a keepalive timer: the clients' have none."""
        lines = self.node.run(["ss", "-Htno", "state", "established", "dst", backend]).stdout.splitlines()
        return sum("timer:(keepalive" in line for line in lines)

    def stop(self) -> None:
        self.agent.stop()
        self.client.stop()

    def heartbeats(self) -> dict:
        return {b["address"]: b.get("heartbeat") for pool in self.agent.status()["pools"] for b in pool["backends"]}

    def blackhole(self, address: str) -> list[list[str]]:
        rules = [["INPUT", "-d", address, "-j", "DROP"], ["OUTPUT", "-s", address, "-j", "DROP"]]
        for rule in rules:
            self.srv.iptables("-I", *rule)
        return rules

    def lift(self, rules: list[list[str]]) -> None:
        for rule in rules:
            self.srv.iptables("-D", *rule)

    def connections(self, backend: str) -> list[dict]:
        return [c for c in self.client.ask("status") if c["backend"] == backend]

    def assert_flowing(self, backend: str, info: str) -> None:
        """Its connections carry data: watches got a line within 0.5 s, idle ones echo a ping."""
        self.client.ask("ping")
        time.sleep(0.5)
        connections = self.connections(backend)
        assert len(connections) == 2 * PER_KIND and all(c["error"] is None for c in connections), f"{connections}\n{info}"
        assert all(c["last"] < 0.6 for c in connections), f"{backend}: {connections}\n{info}"


@pytest.fixture
def world(lab, reaper_binary, tmp_path):
    return World(lab, reaper_binary, tmp_path)


def measure(world: World, heartbeat: bool, elsewhere: bool = False) -> Figures:
    world.start(heartbeat, elsewhere)
    time.sleep(2.0)
    start = time.time()
    rules = world.blackhole(A)
    try:
        dead = world.agent.wait_line(lambda line: line.msg == "backend dead" and line.fields.get("backend") == AP, timeout=15)
        info = world.agent.log_text(40)
        assert dead is not None, info
        wait_for(lambda: all(c["error"] for c in world.connections(A)), 5, "A's connections ended")
        ended = world.connections(A)
        assert [c["error"] for c in ended] == ["ECONNABORTED"] * (2 * PER_KIND), f"{ended}\n{info}"
        world.assert_flowing(B, info)
        assert world.agent.reaps(BP) == [], info
        reap = world.agent.find("reaped", backend=AP, reason="dead")
        assert len(reap) == 1, info
        timed_out = world.agent.find("heartbeat timed out", backend=AP)
        figures = Figures(round(dead.logged_at - start, 3), round(max(c["error_t"] for c in ended) - start, 3),
                          reap[0].fields.get("detected_by", "?"), round(timed_out[0].logged_at - start, 3) if timed_out else None)
        early = world.agent.find("early signal: probing the backend at once", backend=AP)
        assert [line.fields["signal"] for line in early] == (["heartbeat"] if heartbeat else []), info
        if heartbeat:
            detail = early[0].fields.get("detail", "")
            assert "went unacknowledged" in detail and ("ETIMEDOUT" in detail or "EHOSTUNREACH" in detail), early[0].text
    finally:
        world.lift(rules)
    world.stop()
    return figures


def test_a_silent_death_behind_idle_and_receive_only_connections_is_seen_a_second_sooner_with_the_heartbeat(world):
    control = measure(world, heartbeat=False)
    # A answers again before the second run: probes count it up from a fresh agent.
    with_heartbeat = measure(world, heartbeat=True)
    print(f"\nblackhole of A, probes 2s/1s/fall 3, {PER_KIND} idle + {PER_KIND} receive-only connections per backend:"
          f"\n  heartbeat off: backend dead after {control.dead_after:.3f} s, connections ended after {control.ended_after:.3f} s"
          f" (detected_by={control.detected_by})"
          f"\n  heartbeat on:  backend dead after {with_heartbeat.dead_after:.3f} s, connections ended after "
          f"{with_heartbeat.ended_after:.3f} s (detected_by={with_heartbeat.detected_by}, "
          f"heartbeat timed out after {with_heartbeat.signal_after} s)")
    assert control.detected_by == "probes" and with_heartbeat.detected_by == "heartbeat"
    assert control.signal_after is None and with_heartbeat.signal_after is not None
    assert with_heartbeat.dead_after + 1.0 <= control.dead_after
    assert with_heartbeat.ended_after + 1.0 <= control.ended_after


def test_a_pool_in_another_namespace_gets_its_heartbeat_from_the_agents_own(world):
    """The balancer runs in a namespace of its own (`netns:`): its connections are there, the
    heartbeat is made from the agent's namespace, as the probes are; its timeout reaps the other
    namespace's connections sooner, both ways."""
    control = measure(world, heartbeat=False, elsewhere=True)
    with_heartbeat = measure(world, heartbeat=True, elsewhere=True)
    print(f"\nthe same, connections in another namespace: heartbeat off {control.ended_after:.3f} s "
          f"({control.detected_by}), on {with_heartbeat.ended_after:.3f} s ({with_heartbeat.detected_by}, "
          f"timed out after {with_heartbeat.signal_after} s)")
    assert control.detected_by == "probes" and with_heartbeat.detected_by == "heartbeat"
    assert with_heartbeat.ended_after + 1.0 <= control.ended_after
    assert world.node.run(["ss", "-Htn", "state", "established", "dst", A]).stdout.strip() == "", "nothing of the clients' here"


@pytest.mark.parametrize("pause", [0.5, 0.9])
def test_a_live_backend_paused_shorter_than_a_second_keeps_every_connection(world, pause):
    world.start(heartbeat=True)
    time.sleep(2.0)
    start = time.monotonic()
    rules = world.blackhole(A)
    time.sleep(pause)
    world.lift(rules)
    time.sleep(5.0)
    info = world.agent.log_text(40)
    signals = world.agent.find("early signal: probing the backend at once", backend=AP, since=start)
    timeouts = world.agent.metrics().value("conn_reaper_heartbeat_failures_total", backend=AP, cause="timeout")
    print(f"\n{pause} s pause of A: heartbeat timeouts {timeouts}, early signals {[s.fields['signal'] for s in signals]}, "
          f"reaps {len(world.agent.reaps(AP))}")
    assert world.agent.reaps() == [] and world.agent.find("backend dead") == [], info
    world.assert_flowing(A, info)
    world.assert_flowing(B, info)
    wait_for(lambda: world.heartbeats() == {AP: "up", BP: "up"}, 5, "both heartbeats up again")
    world.stop()


def test_a_heartbeat_the_backend_closes_refuses_or_resets_is_made_again_and_ends_nothing(world):
    world.start(heartbeat=True)
    time.sleep(1.0)
    start = time.monotonic()
    # A restarts its listener: its silent connection (the heartbeat) gets a FIN, the heartbeat made
    # again after a second meets a refused port, the next one (2 s later) an open one.
    world.server.ask("restart A 1.5")
    world.server.ask("drop B rst")
    time.sleep(6.0)
    info = world.agent.log_text(40)
    metrics = world.agent.metrics()
    failures = {(backend, cause): metrics.value("conn_reaper_heartbeat_failures_total", backend=backend, cause=cause)
                for backend in (AP, BP) for cause in ("timeout", "refused", "reset", "closed", "other")}
    print(f"\nheartbeat failures after A's listener restart and B's RST: { {k: v for k, v in failures.items() if v} }")
    assert failures[(AP, "closed")] == 1 and failures[(AP, "refused")] >= 1, f"{failures}\n{info}"
    assert failures[(BP, "reset")] == 1, f"{failures}\n{info}"
    assert failures[(AP, "timeout")] == 0 and failures[(BP, "timeout")] == 0, f"{failures}\n{info}"
    wait_for(lambda: world.heartbeats() == {AP: "up", BP: "up"}, 5, "both heartbeats up again")
    now = world.agent.metrics()
    assert now.get("conn_reaper_heartbeat_up", backend=AP) == 1 and now.get("conn_reaper_heartbeat_up", backend=BP) == 1
    assert world.agent.find("early signal: probing the backend at once", since=start) == [], info
    assert world.agent.reaps() == [] and world.agent.find("backend dead") == [], info
    world.assert_flowing(A, info)
    world.assert_flowing(B, info)
    world.stop()


def test_the_heartbeat_follows_a_reload_and_is_one_keepalive_socket_per_backend(world):
    world.start(heartbeat=True)
    assert (world.keepalive_sockets(AP), world.keepalive_sockets(BP)) == (1, 1)
    world.write_config(heartbeat=False)
    world.agent.signal(signal.SIGHUP)
    wait_for(lambda: world.heartbeats() == {AP: None, BP: None}, 5, "heartbeats gone after the reload")
    wait_for(lambda: (world.keepalive_sockets(AP), world.keepalive_sockets(BP)) == (0, 0), 2, "heartbeat sockets closed")
    assert world.agent.metrics().get("conn_reaper_heartbeat_up") is None
    world.write_config(heartbeat=True)
    world.agent.signal(signal.SIGHUP)
    wait_for(lambda: world.heartbeats() == {AP: "up", BP: "up"}, 5, "heartbeats back after the reload")
    assert (world.keepalive_sockets(AP), world.keepalive_sockets(BP)) == (1, 1)
    info = world.agent.log_text(40)
    assert world.agent.reaps() == [] and world.agent.find("early signal: probing the backend at once") == [], info
    world.assert_flowing(A, info)
    world.stop()
