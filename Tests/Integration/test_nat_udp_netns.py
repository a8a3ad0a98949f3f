"""NAT'd Service VIPs, UDP flows and other network namespaces: what the local socket table cannot name.

    client ns "cli"                                        backend ns "b1"            backend ns "b2"
    to-b1 10.236.1.1/24  <veth>  10.236.1.2               TCP 443 stream, UDP 53 answer, TCP 8181 health
    to-b2 10.236.2.1/24  <veth>  10.236.2.2               the same, answering "b2"
    OUTPUT nat: VIP 10.236.100.1 tcp/443 and udp/53 -> b1 (re-pointed at b2 when b1 dies);
                decoy VIP 10.236.100.2 tcp/443 -> b2 all along

Every backend names itself in each line (TCP: every 100 ms) and each answer (UDP), so the client
knows which backend it reaches through the VIP. Addresses exist only in these namespaces.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import textwrap
import time

CLIENT1, B1, CLIENT2, B2 = "10.236.1.1", "10.236.1.2", "10.236.2.1", "10.236.2.2"
VIP, DECOY_VIP = "10.236.100.1", "10.236.100.2"
STREAMS, DECOY_STREAMS = 20, 3
HEALTH_PORT = 8181

BACKEND = textwrap.dedent("""
    import socket, sys, threading, time
    ADDR, NAME = sys.argv[1], sys.argv[2].encode()

    def talk(connection):
        try:
            while True:
                connection.sendall(NAME + b"\\n")
                time.sleep(0.1)
        except OSError:
            pass

    def tcp(port, talking):
        server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((ADDR, port)); server.listen(256)
        def serve():
            while True:
                connection, _ = server.accept()
                if talking:
                    threading.Thread(target=talk, args=(connection,), daemon=True).start()
                else:
                    connection.close()
        threading.Thread(target=serve, daemon=True).start()

    tcp(443, True)
    tcp(%d, False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind((ADDR, 53))
    print("ready", flush=True)
    while True:
        _, sender = udp.recvfrom(512)
        udp.sendto(NAME, sender)
""" % HEALTH_PORT)

# Long-lived clients of the VIPs. Each TCP stream reconnects to its VIP on any error, like a
# client library; the UDP client sends a query every 50 ms on one connected socket and opens a
# new one only when the socket reports an error (a destroyed socket: ECONNABORTED). Events are
# JSON lines: the first line from each backend per stream, and every error.
CLIENT = textwrap.dedent("""
    import errno, json, socket, sys, threading, time
    VIP, DECOY_VIP, STREAMS, DECOYS = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    lock = threading.Lock()

    def emit(**event):
        event["t"] = time.monotonic()
        with lock:
            sys.stdout.write(json.dumps(event) + "\\n"); sys.stdout.flush()

    def name(error):
        return errno.errorcode.get(error.errno, str(error)) if error.errno else str(error)

    def stream(kind, index, host):
        seen = set()
        while True:
            try:
                connection = socket.create_connection((host, 443), timeout=0.5)
                connection.settimeout(None)
                buffer = b""
                while True:
                    chunk = connection.recv(4096)
                    if not chunk:
                        raise OSError(0, "eof")
                    buffer += chunk
                    while b"\\n" in buffer:
                        line, buffer = buffer.split(b"\\n", 1)
                        if line not in seen:
                            seen.add(line)
                            emit(kind=kind, i=index, ev="data", name=line.decode())
            except OSError as error:
                emit(kind=kind, i=index, ev="error", err=name(error))
                time.sleep(0.01)

    def datagrams():
        seen = set()
        def fresh():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect((VIP, 53)); s.settimeout(0.05)
            return s
        udp = fresh()
        emit(kind="udp", i=0, ev="socket", local=udp.getsockname()[1])
        while True:
            try:
                udp.send(b"q")
                answer = udp.recv(512)
                if answer not in seen:
                    seen.add(answer)
                    emit(kind="udp", i=0, ev="data", name=answer.decode())
                time.sleep(0.05)
            except socket.timeout:
                continue
            except OSError as error:
                emit(kind="udp", i=0, ev="error", err=name(error))
                udp.close(); udp = fresh()
                emit(kind="udp", i=0, ev="socket", local=udp.getsockname()[1])

    for index in range(STREAMS):
        threading.Thread(target=stream, args=("vip", index, VIP), daemon=True).start()
    for index in range(DECOYS):
        threading.Thread(target=stream, args=("decoy", index, DECOY_VIP), daemon=True).start()
    threading.Thread(target=datagrams, daemon=True).start()
    while True:
        time.sleep(3600)
""")


class Events:
    """The client's event lines, read without blocking."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.events: list[dict] = []
        self.buffer = b""

    def pump(self, seconds: float = 0.0) -> None:
        deadline = time.monotonic() + seconds
        fd = self.process.stdout.fileno()
        while True:
            left = max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"the client exited: {self.process.poll()}")
                self.buffer += chunk
                while b"\n" in self.buffer:
                    line, self.buffer = self.buffer.split(b"\n", 1)
                    self.events.append(json.loads(line))
            elif left == 0:
                return

    def first(self, kind: str, index: int, name: str, after: float = 0.0) -> float | None:
        times = [e["t"] for e in self.events
                 if e["kind"] == kind and e["i"] == index and e["ev"] == "data" and e["name"] == name and e["t"] >= after]
        return min(times) if times else None

    def errors(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["kind"] == kind and e["ev"] == "error"]


def point_vip(client, backend: str) -> None:
    """The VIP's rules, replaced as a whole (kube-proxy rewrites its chains the same way)."""
    client.iptables("-t", "nat", "-F", "OUTPUT")
    client.dnat(VIP, backend, 443, "tcp")
    client.dnat(VIP, backend, 53, "udp")
    client.dnat(DECOY_VIP, B2, 443, "tcp")


def build(lab, tmp_path):
    client, b1, b2 = lab.namespace("cli"), lab.namespace("b1"), lab.namespace("b2")
    link1 = lab.link(client, b1, [f"{CLIENT1}/24"], [f"{B1}/24"])
    lab.link(client, b2, [f"{CLIENT2}/24"], [f"{B2}/24"])
    client.add_route("10.236.100.0/24", via=B2)   # a route for the VIPs' first lookup; DNAT reroutes
    b1.add_route("default", via=CLIENT1)           # the source was picked for that first route
    b2.add_route("default", via=CLIENT2)
    client.enable_conntrack()
    point_vip(client, B1)
    (tmp_path / "backend.py").write_text(BACKEND)
    (tmp_path / "client.py").write_text(CLIENT)
    for namespace, address, name in ((b1, B1, "b1"), (b2, B2, "b2")):
        server = namespace.popen(["python3", str(tmp_path / "backend.py"), address, name],
                                 stdout=subprocess.PIPE, text=True)
        assert server.stdout.readline().strip() == "ready"
    return client, b1, link1


def agent_config(tmp_path, netns_lines: str = "") -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(textwrap.dedent(f"""\
        listen: 127.0.0.1:9751
        {netns_lines}
        pools:
          - name: vip
            backends: ["{B1}:443", "{B2}:443"]
            protocols: [tcp, udp]
            probe: {{type: tcp, port: {HEALTH_PORT}, interval: 200ms, timeout: 150ms, fall: 2, rise: 2}}
          - name: dns
            backends: ["{B1}:53", "{B2}:53"]
            protocols: [udp]
            probe: {{type: tcp, port: {HEALTH_PORT}, interval: 200ms, timeout: 150ms, fall: 2, rise: 2}}
        """))
    return str(path)


def wait_ready(namespace, port: int = 9751) -> None:
    namespace.wait_until_answers(f"http://127.0.0.1:{port}/readyz", timeout=10)


def start_clients(client, tmp_path) -> Events:
    process = client.popen(["python3", "-u", str(tmp_path / "client.py"), VIP, DECOY_VIP, str(STREAMS), str(DECOY_STREAMS)],
                           stdout=subprocess.PIPE)
    events = Events(process)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events.pump(0.1)
        if all(events.first("vip", i, "b1") for i in range(STREAMS)) and events.first("udp", 0, "b1") \
                and all(events.first("decoy", i, "b2") for i in range(DECOY_STREAMS)):
            return events
    raise AssertionError(f"the clients did not all reach their backends: {events.events[-20:]}")


def cut_backend1(client, b1, link) -> float:
    """Backend 1 goes silent (its link down: no FIN, no RST) and the VIP is re-pointed at backend 2."""
    b1.ip("link", "set", link.b_dev, "down")
    cut = time.monotonic()
    point_vip(client, B2)
    return cut


def test_agent_recovers_vip_streams_and_udp_from_a_dead_natted_backend(lab, reaper_binary, tmp_path):
    client, b1, link1 = build(lab, tmp_path)
    agent = client.popen([reaper_binary, "run", "--config", agent_config(tmp_path)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_ready(client)
    events = start_clients(client, tmp_path)
    cut = cut_backend1(client, b1, link1)
    events.pump(3.0)

    tcp = [events.first("vip", i, "b2", after=cut) for i in range(STREAMS)]
    udp = events.first("udp", 0, "b2", after=cut)
    agent.terminate()
    _, log = agent.communicate(timeout=10)
    assert all(t is not None for t in tcp), f"streams that never reached backend 2: {tcp}\n{log}"
    worst = max(t - cut for t in tcp)
    print(f"\nVIP recovery with the agent: TCP worst {worst:.3f} s, median {sorted(t - cut for t in tcp)[STREAMS // 2]:.3f} s, "
          f"UDP {None if udp is None else round(udp - cut, 3)} s")
    assert worst <= 1.0, f"TCP streams answered from backend 2 only {worst:.3f} s after the cut\n{log}"
    assert udp is not None and udp - cut <= 1.0, f"UDP answered by backend 2 at {udp and udp - cut}\n{log}"
    # The streams were ended by the destroy (ECONNABORTED), not by a timeout of their own.
    aborted = [e for e in events.errors("vip") if e["t"] >= cut]
    assert {e["err"] for e in aborted} == {"ECONNABORTED"}, aborted
    assert {e["i"] for e in aborted} == set(range(STREAMS)), aborted
    # Decoys: the flows DNAT'd to the live backend all along were never touched.
    assert events.errors("decoy") == [], events.errors("decoy")
    reaped = [line for line in log.splitlines() if "msg=reaped" in line and f"backend={B1}:" in line]
    assert reaped, log
    assert not any(f"backend={B2}:" in line for line in log.splitlines() if "msg=reaped" in line), log


def test_without_the_agent_neither_recovers(lab, tmp_path):
    client, b1, link1 = build(lab, tmp_path)
    events = start_clients(client, tmp_path)
    cut = cut_backend1(client, b1, link1)
    events.pump(5.0)
    assert [events.first("vip", i, "b2", after=cut) for i in range(STREAMS)] == [None] * STREAMS
    assert events.first("udp", 0, "b2", after=cut) is None
    assert [e for e in events.errors("vip") if e["t"] >= cut] == []


# ---------------------------------------------------------------------------------------------
# purge and list --netns: conn-reaper runs in a namespace of its own and works in others.

LOOPBACK_PORT = 7070


def test_purge_netns_works_in_the_named_namespace_only(topo, reaper):
    from netlab import endpoint
    from topology import TARGET4, TCP_PORT
    ops, twin = topo.lab.namespace("ops"), topo.lab.namespace("twin")
    client_path, twin_path = f"/run/netns/{topo.client.name}", f"/run/netns/{twin.name}"
    client = topo.client_peer
    target = client.connect_one(TARGET4, TCP_PORT)
    client.listen("tcp", "127.0.0.1", LOOPBACK_PORT)
    local = client.connect_one("127.0.0.1", LOOPBACK_PORT)
    twin_peer = twin.peer()
    twin_peer.listen("tcp", "127.0.0.1", LOOPBACK_PORT)
    decoy = twin_peer.connect_one("127.0.0.1", LOOPBACK_PORT)   # same tuple shape, namespace not listed
    assert client.probe([target, local]) == ["ok", "ok"] and twin_peer.probe([decoy]) == ["ok"]

    listed = reaper.ok_json(ops, "list", "--netns", "all", endpoint("127.0.0.1", LOOPBACK_PORT))
    assert {s["netns"] for s in listed["sockets"]} >= {client_path, twin_path}, listed["sockets"]

    document = reaper.ok_json(ops, "purge", "--netns", client_path, endpoint(TARGET4, TCP_PORT),
                              endpoint("127.0.0.1", LOOPBACK_PORT))
    assert sorted((s["netns"], s["remote"], s["result"]) for s in document["sockets"]) == sorted([
        (client_path, endpoint(TARGET4, TCP_PORT), "destroyed"),
        (client_path, endpoint("127.0.0.1", LOOPBACK_PORT), "destroyed")]), document["sockets"]
    assert all(e["netns"] == client_path for e in document["conntrack"]), document["conntrack"]
    assert client.probe([target, local]) == ["ECONNABORTED", "ECONNABORTED"]
    assert twin_peer.probe([decoy]) == ["ok"], "a namespace not listed keeps its sockets"

    text = reaper.run(ops, "list", "--netns", twin_path, endpoint("127.0.0.1", LOOPBACK_PORT))
    assert text.returncode == 0 and text.stdout.splitlines()[0].startswith("Netns"), text.describe()
    assert twin_path in text.stdout, text.describe()


def test_purge_netns_that_cannot_be_entered_says_so(topo, reaper):
    result = reaper.run(topo.client, "purge", "--netns", "/run/netns/does-not-exist-236", "10.236.0.9:1")
    assert result.returncode == 1, result.describe()
    assert "open(/run/netns/does-not-exist-236)" in result.stderr, result.describe()


# ---------------------------------------------------------------------------------------------
# The agent in a namespace of its own, reaping in the client's through `netns:`.
#
#     agent ns "agt" 10.236.3.2/24 <veth> 10.236.3.1 client ns (forwards to the backends)
#
# The agent probes the backends through the client namespace, so backend 1's cut is seen there too.

AGENT, AGENT_GATEWAY = "10.236.3.2", "10.236.3.1"

# A connection from the agent's own namespace (not listed) straight to backend 1: it must stay.
UNLISTED = textwrap.dedent("""
    import errno, socket, sys
    s = socket.create_connection((sys.argv[1], 443), timeout=5); s.settimeout(None)
    print("connected", flush=True)
    try:
        while s.recv(4096):
            pass
        print("eof", flush=True)
    except OSError as error:
        print(errno.errorcode.get(error.errno, str(error)), flush=True)
""")


def join_agent(lab, client, agent_ns) -> None:
    lab.link(agent_ns, client, [f"{AGENT}/24"], [f"{AGENT_GATEWAY}/24"])
    client.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    agent_ns.add_route("10.236.1.0/24", via=AGENT_GATEWAY)
    agent_ns.add_route("10.236.2.0/24", via=AGENT_GATEWAY)


def backends_up(namespace, port: int) -> bool:
    result = namespace.run(["curl", "-sf", f"http://127.0.0.1:{port}/metrics"], check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("conn_reaper_backend_up{")]
    return len(lines) == 4 and all(line.endswith(" 1") or line.endswith(" 1.0") for line in lines)


def wait_backends_up(namespace, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if backends_up(namespace, port):
            return
        time.sleep(0.1)
    raise AssertionError("the agent never saw every backend up")


def check_recovered(events, cut, log, limit: float) -> float:
    tcp = [events.first("vip", i, "b2", after=cut) for i in range(STREAMS)]
    udp = events.first("udp", 0, "b2", after=cut)
    assert all(t is not None for t in tcp), f"streams that never reached backend 2: {tcp}\n{log}"
    worst = max(max(t - cut for t in tcp), (udp or 1e9) - cut)
    assert worst <= limit, f"recovered only {worst:.3f} s after the cut (limit {limit} s)\n{log}"
    aborted = [e for e in events.errors("vip") if e["t"] >= cut]
    assert {e["err"] for e in aborted} == {"ECONNABORTED"}, aborted
    assert events.errors("decoy") == [], events.errors("decoy")
    return worst


def test_agent_in_its_own_namespace_reaps_a_listed_namespace_only(lab, reaper_binary, tmp_path):
    client, b1, link1 = build(lab, tmp_path)
    agent_ns = lab.namespace("agt")
    join_agent(lab, client, agent_ns)
    config = agent_config(tmp_path, f'netns: ["/run/netns/{client.name}"]')
    agent = agent_ns.popen([reaper_binary, "run", "--config", config], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    wait_ready(agent_ns)
    wait_backends_up(agent_ns, 9751)
    (tmp_path / "unlisted.py").write_text(UNLISTED)
    unlisted = agent_ns.popen(["python3", "-u", str(tmp_path / "unlisted.py"), B1], stdout=subprocess.PIPE, text=True)
    assert unlisted.stdout.readline().strip() == "connected"
    events = start_clients(client, tmp_path)
    worst, log = cut_and_recover(client, b1, link1, events, agent)
    print(f"\nagent in another namespace, netns: [path]: recovered within {worst:.3f} s")
    assert f"netns=/run/netns/{client.name}" in log, log
    assert unlisted.poll() is None, "the connection in a namespace not listed must stay open"


def cut_and_recover(client, b1, link1, events, agent, bound: float = 1.0) -> tuple[float, str]:
    """Cuts backend 1, lets the streams run 3 s, stops the agent; the worst recovery and the agent's log."""
    cut = cut_backend1(client, b1, link1)
    events.pump(3.0)
    agent.terminate()
    _, log = agent.communicate(timeout=10)
    return check_recovered(events, cut, log, bound), log


def test_agent_with_netns_all_finds_a_namespace_made_after_it_started(lab, reaper_binary, tmp_path):
    agent_ns = lab.namespace("agt")
    config = agent_config(tmp_path, "netns: all")
    agent = agent_ns.popen([reaper_binary, "run", "--config", config], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    agent_ns.wait_until_answers("http://127.0.0.1:9751/healthz", timeout=10)
    client, b1, link1 = build(lab, tmp_path)   # after the agent started
    join_agent(lab, client, agent_ns)
    wait_backends_up(agent_ns, 9751)
    events = start_clients(client, tmp_path)
    # Every namespace on the node is walked twice before the first reap ends: once for the dead
    # backend's sign of life (its own sockets, NAT'd ones through conntrack), once to reap; that
    # costs about 0.3 s more than one walk did (0.64 s then, 0.83-0.97 s now, on 2 cores).
    worst, log = cut_and_recover(client, b1, link1, events, agent, bound=1.2)
    print(f"\nagent with netns: all, client namespace made after it: recovered within {worst:.3f} s")
    assert f"netns=/run/netns/{client.name}" in log, log


def test_purge_ends_udp_and_tcp_sockets_of_a_vip_natted_to_the_backend(topo, reaper):
    from netlab import endpoint
    from topology import OTHER4, TARGET4, TCP_PORT, UDP_PORT
    vip, vip2 = "10.231.0.100", "10.231.0.101"
    for proto, port in (("tcp", TCP_PORT), ("udp", UDP_PORT)):
        topo.client.dnat(vip, TARGET4, port, proto)
        topo.client.dnat(vip2, OTHER4, port, proto)
    client = topo.client_peer
    natted = [client.connect_one(vip, TCP_PORT), client.connect_one(vip, UDP_PORT, proto="udp")]
    spared = [client.connect_one(vip2, TCP_PORT), client.connect_one(vip2, UDP_PORT, proto="udp")]
    assert client.probe(natted + spared) == ["ok"] * 4

    listed = reaper.ok_json(topo.client, "list", "--proto", "all", endpoint(TARGET4, TCP_PORT), endpoint(TARGET4, UDP_PORT))
    assert sorted((s["proto"], s["remote"], s["through_conntrack"], s["result"]) for s in listed["sockets"]) == [
        ("tcp", endpoint(vip, TCP_PORT), True, "listed"), ("udp", endpoint(vip, UDP_PORT), True, "listed")]
    assert client.probe(natted) == ["ok", "ok"], "list changes nothing"

    document = reaper.ok_json(topo.client, "purge", "--proto", "all", endpoint(TARGET4, TCP_PORT), endpoint(TARGET4, UDP_PORT))
    assert sorted((s["proto"], s["remote"], s["result"]) for s in document["sockets"]) == [
        ("tcp", endpoint(vip, TCP_PORT), "destroyed"), ("udp", endpoint(vip, UDP_PORT), "destroyed")]
    assert sorted((e["proto"], e["matched"], e["result"]) for e in document["conntrack"]) == [
        ("tcp", "reply-source", "deleted"), ("udp", "reply-source", "deleted")]
    flows = topo.client.conntrack_flows("ipv4")   # before the probes below make new entries
    assert [f for f in flows if f.reply.src == TARGET4] == [], flows
    assert len([f for f in flows if f.reply.src == OTHER4]) == 2, flows
    assert client.probe(natted) == ["ECONNABORTED", "ECONNABORTED"]
    assert client.probe(spared) == ["ok", "ok"]
