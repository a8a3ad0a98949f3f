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

import textwrap
import time

from lab import kernel
from lab.agent import Agent
from lab.netns import endpoint, wait_for
from lab.topology import OTHER4, TARGET4, TCP_PORT, UDP_PORT
from lab.traffic import PeerProcess

CLIENT1, B1, CLIENT2, B2 = "10.236.1.1", "10.236.1.2", "10.236.2.1", "10.236.2.2"
VIP, DECOY_VIP = "10.236.100.1", "10.236.100.2"
STREAMS, DECOY_STREAMS = 20, 3
HEALTH_PORT = 8181
AGENT_LISTEN = "127.0.0.1:9751"

class VipEvents:
    """What the vip-client role reported (lab/peer/vip_client.py), read as it arrives."""

    def __init__(self, peer: PeerProcess) -> None:
        self.peer = peer

    @property
    def events(self) -> list[dict]:
        return list(self.peer.events)

    def first(self, kind: str, index: int, name: str, after: float = 0.0) -> float | None:
        times = [e["t"] for e in self.events
                 if e["kind"] == kind and e["i"] == index and e["event"] == "data" and e["name"] == name and e["t"] >= after]
        return min(times) if times else None

    def errors(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["kind"] == kind and e["event"] == "error"]


def point_vip(client, backend: str) -> None:
    """The VIP's rules, replaced as a whole in one iptables-restore transaction, as kube-proxy does.

    Not a flush and re-adds: between `-F OUTPUT` and the UDP rule's `-A` the VIP had no DNAT, and a
    reap that deleted the UDP flow's entry in that gap (likelier under a slow emulated CPU, where each
    iptables call takes a while) let the client's next datagram create an entry with no NAT, sent by
    the VIPs' route to b2 unanswered and refreshed by every retry: UDP never reached backend 2."""
    rules = [f"-A OUTPUT -d {VIP} -p tcp --dport 443 -j DNAT --to-destination {backend}:443",
             f"-A OUTPUT -d {VIP} -p udp --dport 53 -j DNAT --to-destination {backend}:53",
             f"-A OUTPUT -d {DECOY_VIP} -p tcp --dport 443 -j DNAT --to-destination {B2}:443"]
    client.run(["iptables-restore", "-w", "--noflush"], input="\n".join(["*nat", "-F OUTPUT", *rules, "COMMIT", ""]))


def build(lab, tmp_path):
    client, b1, b2 = lab.namespace("cli"), lab.namespace("b1"), lab.namespace("b2")
    link1 = lab.link(client, b1, [f"{CLIENT1}/24"], [f"{B1}/24"])
    lab.link(client, b2, [f"{CLIENT2}/24"], [f"{B2}/24"])
    client.add_route("10.236.100.0/24", via=B2)   # a route for the VIPs' first lookup; DNAT reroutes
    b1.add_route("default", via=CLIENT1)           # the source was picked for that first route
    b2.add_route("default", via=CLIENT2)
    client.enable_conntrack()
    point_vip(client, B1)
    for namespace, address, name in ((b1, B1, "b1"), (b2, B2, "b2")):
        PeerProcess(namespace, "talker", address, name, 443, HEALTH_PORT, 53)
    return client, b1, link1


def agent_config(tmp_path, netns_lines: str = "") -> str:
    """Probes every 200 ms, timeout 150 ms: times lab.kernel.TIME_SCALE on an emulated CPU."""
    probe = kernel.scaled_probe({"interval": "200ms", "timeout": "150ms"})
    path = tmp_path / "agent.yaml"
    path.write_text(textwrap.dedent(f"""\
        listen: {AGENT_LISTEN}
        {netns_lines}
        pools:
          - name: vip
            backends: ["{B1}:443", "{B2}:443"]
            protocols: [tcp, udp]
            probe: {{type: tcp, port: {HEALTH_PORT}, interval: {probe['interval']}, timeout: {probe['timeout']}, fall: 2, rise: 2}}
          - name: dns
            backends: ["{B1}:53", "{B2}:53"]
            protocols: [udp]
            probe: {{type: tcp, port: {HEALTH_PORT}, interval: {probe['interval']}, timeout: {probe['timeout']}, fall: 2, rise: 2}}
        """))
    return str(path)


def start_agent(namespace, binary: str, config: str) -> Agent:
    agent = Agent(namespace, binary, ["--config", config], listen=AGENT_LISTEN)
    agent.wait_ready()
    return agent


def start_clients(client, tmp_path) -> VipEvents:
    events = VipEvents(PeerProcess(client, "vip-client", VIP, DECOY_VIP, STREAMS, DECOY_STREAMS, 443, 53))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if all(events.first("vip", i, "b1") for i in range(STREAMS)) and events.first("udp", 0, "b1") \
                and all(events.first("decoy", i, "b2") for i in range(DECOY_STREAMS)):
            return events
    raise AssertionError(f"the clients did not all reach their backends: {events.events[-20:]}")


def cut_backend1(client, b1, link) -> float:
    """The VIP is re-pointed at backend 2 and backend 1 goes silent (its link down: no FIN, no RST).

    Re-pointed first: existing flows keep their NAT binding to b1 and stall until reaped, which is what
    the tests watch. Cut first, a re-point slower than the agent's reap (seen under an emulated CPU: the
    UDP flow's entry re-made by the old rule, reply src b1, after the reap) leaves new flows NAT'd to the
    dead backend; that is the agent's still-dead path, not what these tests measure."""
    point_vip(client, B2)
    b1.ip("link", "set", link.b_dev, "down")
    return time.monotonic()


def test_agent_recovers_vip_streams_and_udp_from_a_dead_natted_backend(lab, reaper_binary, tmp_path):
    client, b1, link1 = build(lab, tmp_path)
    kernel.announce_scale(f"probes every {kernel.scaled_probe({'interval': '200ms'})['interval']}; "
                          f"{kernel.scaled(3.0):g}s after the cut before looking")
    agent = start_agent(client, reaper_binary, agent_config(tmp_path))
    events = start_clients(client, tmp_path)
    cut = cut_backend1(client, b1, link1)
    time.sleep(kernel.scaled(3.0))      # the probes' fall and a held first pass take longer with slower probes

    tcp = [events.first("vip", i, "b2", after=cut) for i in range(STREAMS)]
    udp = events.first("udp", 0, "b2", after=cut)
    agent.stop()
    log = agent.log_text(None)
    assert all(t is not None for t in tcp), f"streams that never reached backend 2: {tcp}\n{log}"
    worst = max(t - cut for t in tcp)
    print(f"\nVIP recovery with the agent: TCP worst {worst:.3f} s, median {sorted(t - cut for t in tcp)[STREAMS // 2]:.3f} s, "
          f"UDP {None if udp is None else round(udp - cut, 3)} s")
    udp_entries = [f.line for f in client.conntrack_flows("ipv4", "udp")]
    assert udp is not None, f"UDP never answered by backend 2; its entries now: {udp_entries}\n{log}"
    kernel.speed_bound(worst, 1.0, "VIP TCP streams answered from backend 2 after the cut (worst)")
    kernel.speed_bound(udp - cut, 1.0, "VIP UDP answered from backend 2 after the cut")
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
    time.sleep(5.0)
    assert [events.first("vip", i, "b2", after=cut) for i in range(STREAMS)] == [None] * STREAMS
    assert events.first("udp", 0, "b2", after=cut) is None
    assert [e for e in events.errors("vip") if e["t"] >= cut] == []


# ---------------------------------------------------------------------------------------------
# purge and list --netns: conn-reaper runs in a namespace of its own and works in others.

LOOPBACK_PORT = 7070


def test_purge_netns_works_in_the_named_namespace_only(topo, reaper):
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

def join_agent(lab, client, agent_ns) -> None:
    lab.link(agent_ns, client, [f"{AGENT}/24"], [f"{AGENT_GATEWAY}/24"])
    client.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    agent_ns.add_route("10.236.1.0/24", via=AGENT_GATEWAY)
    agent_ns.add_route("10.236.2.0/24", via=AGENT_GATEWAY)


def wait_backends_up(agent: Agent) -> None:
    def every_backend_up() -> bool:
        samples = agent.metrics().matching("conn_reaper_backend_up")
        return len(samples) == 4 and all(value == 1 for _, value in samples)
    wait_for(every_backend_up, 10, "the agent to see every backend up")


def check_recovered(events, cut, log, limit: float) -> float:
    tcp = [events.first("vip", i, "b2", after=cut) for i in range(STREAMS)]
    udp = events.first("udp", 0, "b2", after=cut)
    assert all(t is not None for t in tcp), f"streams that never reached backend 2: {tcp}\n{log}"
    assert udp is not None, f"UDP never answered by backend 2\n{log}"
    worst = max(max(t - cut for t in tcp), udp - cut)
    kernel.speed_bound(worst, limit + 1e-9, "VIP TCP and UDP recovered after the cut (worst)")
    aborted = [e for e in events.errors("vip") if e["t"] >= cut]
    assert {e["err"] for e in aborted} == {"ECONNABORTED"}, aborted
    assert events.errors("decoy") == [], events.errors("decoy")
    return worst


def test_agent_in_its_own_namespace_reaps_a_listed_namespace_only(lab, reaper_binary, tmp_path):
    client, b1, link1 = build(lab, tmp_path)
    agent_ns = lab.namespace("agt")
    join_agent(lab, client, agent_ns)
    config = agent_config(tmp_path, f'netns: ["/run/netns/{client.name}"]')
    agent = start_agent(agent_ns, reaper_binary, config)
    wait_backends_up(agent)
    # A connection from the agent's own namespace (not listed) straight to backend 1: it must stay.
    unlisted = agent_ns.peer()
    unlisted_socket = unlisted.connect_one(B1, 443)
    events = start_clients(client, tmp_path)
    worst, log = cut_and_recover(client, b1, link1, events, agent)
    print(f"\nagent in another namespace, netns: [path]: recovered within {worst:.3f} s")
    assert f"netns=/run/netns/{client.name}" in log, log
    assert unlisted.state([unlisted_socket]) == ["ok"], "the connection in a namespace not listed must stay open"


def cut_and_recover(client, b1, link1, events, agent, bound: float = 1.0) -> tuple[float, str]:
    """Cuts backend 1, lets the streams run 3 s, stops the agent; the worst recovery and the agent's log."""
    cut = cut_backend1(client, b1, link1)
    time.sleep(3.0)
    agent.stop()
    log = agent.log_text(None)
    return check_recovered(events, cut, log, bound), log


def test_agent_with_netns_all_finds_a_namespace_made_after_it_started(lab, reaper_binary, tmp_path):
    agent_ns = lab.namespace("agt")
    config = agent_config(tmp_path, "netns: all")
    agent = Agent(agent_ns, reaper_binary, ["--config", config], listen=AGENT_LISTEN)
    agent.wait_listening()
    client, b1, link1 = build(lab, tmp_path)   # after the agent started
    join_agent(lab, client, agent_ns)
    wait_backends_up(agent)
    events = start_clients(client, tmp_path)
    # Every namespace on the node is walked twice before the first reap ends: once for the dead
    # backend's sign of life (its own sockets, NAT'd ones through conntrack), once to reap. A
    # namespace with an empty conntrack table costs no dump (each walks 262,144 buckets, 8-10 ms):
    # 0.62-0.76 s here on an idle machine (1.19 s beside a TCG VM and a simulation), against
    # 0.87-1.29 s when all five namespaces were dumped four times a walk.
    worst, log = cut_and_recover(client, b1, link1, events, agent, bound=1.2)
    print(f"\nagent with netns: all, client namespace made after it: recovered within {worst:.3f} s")
    assert f"netns=/run/netns/{client.name}" in log, log


def test_purge_ends_udp_and_tcp_sockets_of_a_vip_natted_to_the_backend(topo, reaper):
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


#: A DNS-like server on this host: an unconnected UDP socket on 0.0.0.0:53, answering every datagram.
LOCAL_DNS = r"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(512)
    s.sendto(b"local", peer)
"""

#: A fresh connected UDP socket to the VIP: one query, then waits up to 3 s; prints how it ended.
ONE_QUERY = r"""
import errno, json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 53))
s.settimeout(0.05)
start = time.monotonic()
s.send(b"q")
result = "no answer"
while time.monotonic() - start < 3.0:
    try:
        result = "answer " + s.recv(512).decode()
        break
    except socket.timeout:
        continue
    except OSError as e:
        result = errno.errorcode.get(e.errno, str(e.errno))
        break
print(json.dumps({"result": result, "after": round(time.monotonic() - start, 3), "port": s.getsockname()[1]}))
"""


def test_a_new_udp_flow_through_a_vip_still_pointing_at_a_dead_backend_is_ended_and_a_local_server_kept(lab, reaper_binary, tmp_path):
    """The announced-flow path for UDP: the VIP's DNAT still points at backend 1 after its death (a
    lagging kube-proxy). A new query on a fresh connected socket makes a conntrack entry toward it,
    which conntrack announces; the agent looks the socket up by its 4-tuple (UDP's lookup reads it
    turned around) and ends it: ECONNABORTED well before the next walk. A DNS server of this host's
    own, an unconnected socket on 0.0.0.0:53 (the port the flow is sent to), keeps answering."""
    import json
    import subprocess

    client, b1, link1 = build(lab, tmp_path)
    server = client.popen(["python3", "-u", "-c", LOCAL_DNS], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        agent = start_agent(client, reaper_binary, agent_config(tmp_path))
        wait_backends_up(agent)
        b1.ip("link", "set", link1.b_dev, "down")     # dead; the VIP still points at it
        agent.wait_states({f"dns/{B1}:53": "dead"}, timeout=5)
        time.sleep(0.3)                               # past the first reap's follow-ups
        asked = json.loads(client.run(["python3", "-c", ONE_QUERY, VIP], timeout=10).stdout)
        log = agent.log_text(30)
        assert asked["result"] == "ECONNABORTED", f"{asked}\n{log}"
        kernel.speed_bound(asked["after"], 0.5, "a new UDP flow toward the dead backend ended")
        local = client.run(["python3", "-c", "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                            "s.settimeout(1); s.sendto(b'q', ('127.0.0.1', 53)); print(s.recv(64).decode())"]).stdout.strip()
        assert local == "local", f"the local server stopped answering: {local!r}\n{log}"
        assert server.poll() is None, "the local server's socket was ended"
        print(f"\nnew UDP flow to the VIP NAT'd to the dead backend: {asked['result']} after {asked['after']} s; "
              f"the local 0.0.0.0:53 server answers")
        agent.stop()
    finally:
        server.kill()
        server.wait()
