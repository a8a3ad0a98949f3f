"""conntrack: entries toward a dead backend go, found also behind a DNAT by their reply source."""

from __future__ import annotations

import pytest

from lab import kernel
from lab.netns import endpoint
from lab.topology import OTHER4, OTHER6, TARGET4, TARGET6, TCP_PORT

ABORTED = "ECONNABORTED"

FAMILIES = {
    # family: (backend 1, backend 2, VIP -> backend 1, VIP -> backend 2)
    "ipv4": (TARGET4, OTHER4, "10.231.0.100", "10.231.0.101"),
    "ipv6": (TARGET6, OTHER6, "fd00:231::100", "fd00:231::101"),
}


def flows_with_reply_source(flows, host, port):
    return [f for f in flows if f.proto == "tcp" and f.reply.src == host and f.reply.sport == port]


def flows_to(flows, host, port, proto="tcp"):
    return [f for f in flows if f.proto == proto and f.original.dst == host and f.original.dport == port]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_dnat_entry_found_by_reply_source_and_deleted(topo, reaper, family):
    backend1, backend2, vip1, vip2 = FAMILIES[family]
    topo.client.dnat(vip1, backend1, TCP_PORT)
    topo.client.dnat(vip2, backend2, TCP_PORT)
    client = topo.client_peer
    via_vip1 = client.connect(vip1, TCP_PORT, count=2)
    via_vip2 = client.connect(vip2, TCP_PORT, count=2)
    direct = client.connect_one(backend1, TCP_PORT)
    assert client.probe(via_vip1 + via_vip2 + [direct]) == ["ok"] * 5
    before = topo.client.conntrack_flows(family, "tcp")
    natted1 = flows_with_reply_source(before, backend1, TCP_PORT)
    kept = flows_with_reply_source(before, backend2, TCP_PORT)
    assert sorted(f.original.dst for f in natted1) == sorted([vip1, vip1, backend1]), before
    assert [f.original.dst for f in kept] == [vip2, vip2], before

    document = reaper.ok_json(topo.client, "purge", endpoint(backend1, TCP_PORT))

    entries = document["conntrack"]
    assert all(e["family"] == family and e["proto"] == "tcp" and e["result"] == "deleted" for e in entries), entries
    by_match = {}
    for entry in entries:
        by_match.setdefault(entry["matched"], []).append(entry)
    assert sorted(by_match) == ["original-destination", "reply-source"], entries
    assert len(by_match["reply-source"]) == 2
    for entry in by_match["reply-source"]:
        assert entry["original"]["dst"] == endpoint(vip1, TCP_PORT)
        assert entry["reply"]["src"] == endpoint(backend1, TCP_PORT)
    assert [e["original"]["dst"] for e in by_match["original-destination"]] == [endpoint(backend1, TCP_PORT)]
    assert document["counts"]["conntrack_deleted"] == 3
    # The direct socket to backend 1 is destroyed, and so are the two whose VIP was DNAT'd to it:
    # found through their entries' original tuples. Those DNAT'd to backend 2 stay.
    sockets = document["sockets"]
    assert sorted((s["remote"], s["through_conntrack"]) for s in sockets) == sorted(
        [(endpoint(backend1, TCP_PORT), False)] + [(endpoint(vip1, TCP_PORT), True)] * 2), sockets
    assert all(s["result"] == "destroyed" for s in sockets), sockets

    after = topo.client.conntrack_flows(family, "tcp")
    assert flows_with_reply_source(after, backend1, TCP_PORT) == [], "entries toward backend 1 must be gone"
    assert sorted(repr(f.original) for f in flows_with_reply_source(after, backend2, TCP_PORT)) == \
        sorted(repr(f.original) for f in kept), "entries DNAT'd to backend 2 must stay"
    assert client.probe([direct] + via_vip1) == [ABORTED] * 3
    assert client.probe(via_vip2) == ["ok", "ok"]


def test_no_conntrack_leaves_entries(topo, reaper):
    client = topo.client_peer
    target = client.connect_one(TARGET4, TCP_PORT)
    assert client.probe([target]) == ["ok"]
    before = flows_to(topo.client.conntrack_flows("ipv4", "tcp"), TARGET4, TCP_PORT)
    assert len(before) == 1

    document = reaper.ok_json(topo.client, "purge", "--no-conntrack", endpoint(TARGET4, TCP_PORT))

    assert document["conntrack"] == [] and document["counts"]["conntrack_deleted"] == 0
    assert document["counts"]["sockets_destroyed"] == 1
    after = flows_to(topo.client.conntrack_flows("ipv4", "tcp"), TARGET4, TCP_PORT)
    assert [f.original for f in after] == [f.original for f in before], "the entry must stay"
    assert client.probe([target]) == [ABORTED]


def test_no_sockets_leaves_sockets(topo, reaper):
    client = topo.client_peer
    target = client.connect_one(TARGET4, TCP_PORT)
    decoy = client.connect_one(OTHER4, TCP_PORT)
    assert client.probe([target, decoy]) == ["ok", "ok"]
    assert len(flows_to(topo.client.conntrack_flows("ipv4", "tcp"), TARGET4, TCP_PORT)) == 1

    document = reaper.ok_json(topo.client, "purge", "--no-sockets", endpoint(TARGET4, TCP_PORT))

    assert document["sockets"] == [] and document["counts"]["sockets_destroyed"] == 0
    assert [e["result"] for e in document["conntrack"]] == ["deleted"]
    flows = topo.client.conntrack_flows("ipv4", "tcp")   # read before any new traffic re-creates one
    assert flows_to(flows, TARGET4, TCP_PORT) == []
    assert len(flows_to(flows, OTHER4, TCP_PORT)) == 1
    assert client.probe([target, decoy]) == ["ok", "ok"], "sockets must be left alone"


ORIGINAL_DESTINATION_FORMS = {
    # form: destination text per family (single hosts are filtered in the kernel; prefixes are not)
    "host-port": {"ipv4": endpoint(TARGET4, TCP_PORT), "ipv6": endpoint(TARGET6, TCP_PORT)},
    "host": {"ipv4": TARGET4, "ipv6": TARGET6},
    "prefix-port": {"ipv4": f"10.231.0.0/24:{TCP_PORT}", "ipv6": f"[fd00:231::/64]:{TCP_PORT}"},
}


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("form", list(ORIGINAL_DESTINATION_FORMS))
def test_direct_entry_found_by_original_destination(topo, reaper, form, family):
    target_host = TARGET4 if family == "ipv4" else TARGET6
    destination = ORIGINAL_DESTINATION_FORMS[form][family]
    client = topo.client_peer
    target = client.connect_one(target_host, TCP_PORT)
    assert client.probe([target]) == ["ok"]
    assert len(flows_to(topo.client.conntrack_flows(family, "tcp"), target_host, TCP_PORT)) == 1

    listed = reaper.ok_json(topo.client, "list", destination)
    assert [(e["original"]["dst"], e["matched"]) for e in listed["conntrack"]] == \
        [(endpoint(target_host, TCP_PORT), "original-destination")], \
        f"`list {destination}` must show the entry `conntrack -L` shows: {listed['conntrack']}"

    document = reaper.ok_json(topo.client, "purge", destination)

    assert document["counts"]["conntrack_deleted"] == 1, document["conntrack"]
    assert flows_to(topo.client.conntrack_flows(family, "tcp"), target_host, TCP_PORT) == []
    assert client.probe([target]) == [ABORTED]


def test_an_empty_table_is_not_dumped_and_its_first_entry_is_found(lab, reaper):
    """Every conntrack dump walks each bucket of the host's hash, found or not (8-10 ms at 262,144
    buckets, four dumps a purge), so a purge asks the namespace's entry count first and dumps nothing
    at 0: most namespaces of `netns: all` (pods without NAT rules) have none. Both ways: with the
    table empty the sockets still go; once one NAT'd entry exists it is found by its reply source."""
    client, server = lab.namespace("client"), lab.namespace("server")
    dead, vip = "10.236.9.2", "10.236.9.100"
    lab.link(client, server, ["10.236.9.1/24"], [f"{dead}/24"])
    listener = server.peer()
    listener.listen("tcp", dead, TCP_PORT)
    peer = client.peer()
    direct = peer.connect_one(dead, TCP_PORT)
    assert client.run(["conntrack", "-C"]).stdout.strip() == "0", "nothing tracks this namespace yet"

    document = reaper.ok_json(client, "purge", endpoint(dead, TCP_PORT))
    assert [(s["remote"], s["result"]) for s in document["sockets"]] == [(endpoint(dead, TCP_PORT), "destroyed")]
    assert document["conntrack"] == [] and document["errors"] == [], document
    assert peer.probe([direct]) == [ABORTED]

    client.dnat(vip, dead, TCP_PORT)   # a rule that tracks: the next connection has an entry
    natted = peer.connect_one(vip, TCP_PORT)
    assert int(client.run(["conntrack", "-C"]).stdout) == 1
    document = reaper.ok_json(client, "purge", endpoint(dead, TCP_PORT))
    assert [(s["remote"], s["through_conntrack"]) for s in document["sockets"]] == [(endpoint(vip, TCP_PORT), True)]
    assert [(e["matched"], e["result"]) for e in document["conntrack"]] == [("reply-source", "deleted")], document
    assert peer.probe([natted]) == [ABORTED]
    assert client.run(["conntrack", "-C"]).stdout.strip() == "0"


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_a_flow_dialled_to_the_dead_backend_but_served_by_a_live_one_is_kept(topo, reaper, mode):
    """A NodePort dialled on a dead node's address and DNAT'd here to a live pod is the pod's flow, not
    the dead node's: its socket keeps flowing and its entry stays, also where a flush is asked for (no
    original-destination flush is sent past it). The dead address's own flow goes, both ways in one run."""
    topo.client.dnat(TARGET4, OTHER4, TCP_PORT)     # TARGET4:TCP_PORT answered by OTHER4
    client = topo.client_peer
    served = client.connect_one(TARGET4, TCP_PORT)
    own = client.connect_one(TARGET4, TCP_PORT + 1)
    assert client.probe([served, own]) == ["ok", "ok"]
    assert [f.reply.src for f in flows_to(topo.client.conntrack_flows("ipv4"), TARGET4, TCP_PORT)] == [OTHER4]

    document = reaper.ok_json(topo.client, "purge", "--conntrack-flush", mode, TARGET4)

    assert [(s["remote"], s["result"]) for s in document["sockets"]] == [(endpoint(TARGET4, TCP_PORT + 1), "destroyed")], document
    assert client.probe([own]) == [ABORTED]
    assert client.probe([served]) == ["ok"], "the flow a DNAT sent to a live backend must keep flowing"
    after = topo.client.conntrack_flows("ipv4")
    assert [f.reply.src for f in flows_to(after, TARGET4, TCP_PORT)] == [OTHER4], "its entry must stay"
    assert flows_to(after, TARGET4, TCP_PORT + 1) == []
    flushes = document["counts"]["conntrack_flushes"]
    assert flushes == (1 if mode == "always" and kernel.expect("filtered flush") else 0), document["counts"]
