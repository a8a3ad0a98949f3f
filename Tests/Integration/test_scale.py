"""Many sockets: every target destroyed, every decoy alive. At this size the destroys are split over two
threads and the conntrack entries go by a filtered flush (Linux 6.12+; before it, by 600 exact deletes)."""

from __future__ import annotations

import time

from lab import kernel
from lab.netns import endpoint
from lab.topology import OTHER4, OTHER_TCP_PORT, TARGET4, TARGET6, TCP_PORT

ABORTED = "ECONNABORTED"


def test_600_targets_among_1200(topo, reaper):
    client = topo.client_peer
    targets = client.connect(TARGET4, TCP_PORT, count=500) + client.connect("::ffff:" + TARGET4, TCP_PORT, count=100)
    decoys = (client.connect(TARGET4, OTHER_TCP_PORT, count=250) + client.connect(OTHER4, TCP_PORT, count=250)
              + client.connect(TARGET6, TCP_PORT, count=100))
    assert len(targets) == 600 and len(decoys) == 600
    assert client.probe(targets + decoys, timeout=5) == ["ok"] * 1200
    def decoy_entries():
        flows = topo.client.conntrack_flows()
        return sorted(repr(f.original) for f in flows if f.proto == "tcp" and not (f.original.dst == TARGET4 and f.original.dport == TCP_PORT))
    decoys_before = decoy_entries()
    assert len(decoys_before) == 600

    started = time.monotonic()
    document = reaper.ok_json(topo.client, "purge", endpoint(TARGET4, TCP_PORT))
    took = time.monotonic() - started

    counts = document["counts"]
    assert counts["sockets_matched"] == 600 and counts["sockets_destroyed"] == 600, counts
    assert {s["result"] for s in document["sockets"]} == {"destroyed"}
    assert len({s["cookie"] for s in document["sockets"]}) == 600
    assert counts["conntrack_deleted"] == 600, counts
    if kernel.expect("filtered flush"):
        # Direct flows: one original-destination flush, its entries unlisted and counted by the table's size.
        assert counts["conntrack_flushes"] == 1, counts
        assert counts["conntrack_flushed_unlisted"] == 600 and document["conntrack"] == [], counts
    else:
        assert counts["conntrack_flushes"] == 0 and counts["conntrack_flushed_unlisted"] == 0, counts
        listed = document["conntrack"]
        assert len(listed) == 600 and {e["deleted_by"] for e in listed} == {"exact"}, counts
    flows = topo.client.conntrack_flows("ipv4", "tcp")   # before the probes below re-create any
    assert [f for f in flows if f.original.dst == TARGET4 and f.original.dport == TCP_PORT] == []
    assert decoy_entries() == decoys_before
    target_results = client.probe(targets, timeout=5)
    assert target_results.count(ABORTED) == 600, {r: target_results.count(r) for r in set(target_results)}
    decoy_results = client.probe(decoys, timeout=5)
    assert decoy_results.count("ok") == 600, {r: decoy_results.count(r) for r in set(decoy_results)}
    kernel.speed_bound(took, 20, "purge of 600 sockets")
