"""UDP: connected sockets are destroyed with --proto udp and their conntrack entries deleted."""

from __future__ import annotations

import pytest

from lab.netns import endpoint
from lab.topology import OTHER4, OTHER6, OTHER_UDP_PORT, TARGET4, TARGET6, TCP_PORT, UDP_PORT

ABORTED = "ECONNABORTED"
FAMILIES = {"ipv4": (TARGET4, OTHER4), "ipv6": (TARGET6, OTHER6)}


def udp_flows_to(flows, host, port):
    return [f for f in flows if f.proto == "udp" and f.original.dst == host and f.original.dport == port]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_udp_socket_and_entry_purged(topo, reaper, family):
    target_host, other_host = FAMILIES[family]
    client = topo.client_peer
    target = client.connect_one(target_host, UDP_PORT, proto="udp")
    decoys = [client.connect_one(target_host, OTHER_UDP_PORT, proto="udp"),   # unrelated flow: other port
              client.connect_one(other_host, UDP_PORT, proto="udp")]           # unrelated flow: other host
    tcp_same_port = client.connect_one(target_host, TCP_PORT)
    assert client.probe([target, *decoys, tcp_same_port]) == ["ok"] * 4   # the echoes create the entries
    flows = topo.client.conntrack_flows(family, "udp")
    assert len(udp_flows_to(flows, target_host, UDP_PORT)) == 1, flows
    decoy_flows = udp_flows_to(flows, target_host, OTHER_UDP_PORT) + udp_flows_to(flows, other_host, UDP_PORT)
    assert len(decoy_flows) == 2, flows

    # Default --proto tcp leaves UDP alone.
    untouched = reaper.ok_json(topo.client, "purge", endpoint(target_host, UDP_PORT))
    assert untouched["sockets"] == [] and untouched["conntrack"] == []
    assert client.probe([target]) == ["ok"]

    document = reaper.ok_json(topo.client, "purge", "--proto", "udp", endpoint(target_host, UDP_PORT))

    assert [(s["proto"], s["state"], s["remote"], s["result"]) for s in document["sockets"]] == \
        [("udp", "established", endpoint(target_host, UDP_PORT), "destroyed")], document["sockets"]
    assert [(e["proto"], e["family"], e["original"]["dst"], e["result"]) for e in document["conntrack"]] == \
        [("udp", family, endpoint(target_host, UDP_PORT), "deleted")], document["conntrack"]
    flows = topo.client.conntrack_flows(family, "udp")   # before the decoys' probes refresh anything
    assert udp_flows_to(flows, target_host, UDP_PORT) == [], "the target's UDP entry must be gone"
    assert sorted(repr(f.original) for f in udp_flows_to(flows, target_host, OTHER_UDP_PORT)
                  + udp_flows_to(flows, other_host, UDP_PORT)) == sorted(repr(f.original) for f in decoy_flows)
    assert client.probe([target]) == [ABORTED]
    assert client.probe([*decoys, tcp_same_port]) == ["ok"] * 3


def test_proto_all_covers_tcp_and_udp(topo, reaper):
    client = topo.client_peer
    udp = client.connect_one(TARGET4, UDP_PORT, proto="udp")
    tcp = client.connect_one(TARGET4, TCP_PORT)
    decoy = client.connect_one(OTHER4, UDP_PORT, proto="udp")
    assert client.probe([udp, tcp, decoy]) == ["ok"] * 3

    document = reaper.ok_json(topo.client, "purge", "--proto", "all", TARGET4)

    assert sorted(s["proto"] for s in document["sockets"]) == ["tcp", "udp"]
    assert client.probe([udp, tcp, decoy]) == [ABORTED, ABORTED, "ok"]
