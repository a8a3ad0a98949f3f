"""Many sockets: every target destroyed, every decoy alive."""

from __future__ import annotations

import time

from lab.netns import endpoint
from lab.topology import OTHER4, OTHER_TCP_PORT, TARGET4, TARGET6, TCP_PORT

ABORTED = "ECONNABORTED"


def test_500_targets_among_1000(topo, reaper):
    client = topo.client_peer
    targets = client.connect(TARGET4, TCP_PORT, count=400) + client.connect("::ffff:" + TARGET4, TCP_PORT, count=100)
    decoys = (client.connect(TARGET4, OTHER_TCP_PORT, count=200) + client.connect(OTHER4, TCP_PORT, count=200)
              + client.connect(TARGET6, TCP_PORT, count=100))
    assert len(targets) == 500 and len(decoys) == 500
    assert client.probe(targets + decoys, timeout=5) == ["ok"] * 1000

    started = time.monotonic()
    document = reaper.ok_json(topo.client, "purge", endpoint(TARGET4, TCP_PORT))
    took = time.monotonic() - started

    counts = document["counts"]
    assert counts["sockets_matched"] == 500 and counts["sockets_destroyed"] == 500, counts
    assert {s["result"] for s in document["sockets"]} == {"destroyed"}
    assert len({s["cookie"] for s in document["sockets"]}) == 500
    assert counts["conntrack_deleted"] == 500, counts
    target_results = client.probe(targets, timeout=5)
    assert target_results.count(ABORTED) == 500, {r: target_results.count(r) for r in set(target_results)}
    decoy_results = client.probe(decoys, timeout=5)
    assert decoy_results.count("ok") == 500, {r: decoy_results.count(r) for r in set(decoy_results)}
    flows = topo.client.conntrack_flows("ipv4", "tcp")
    assert [f for f in flows if f.original.dst == TARGET4 and f.original.dport == TCP_PORT] == []
    assert took < 20, f"purge of 500 sockets took {took:.1f}s"
