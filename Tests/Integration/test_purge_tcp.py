"""purge on TCP sockets: targets' owners see ECONNABORTED, decoys keep echoing."""

from __future__ import annotations

import time

import pytest

from lab import kernel
from lab.netns import endpoint
from lab.topology import (BLACKHOLE_PORT, CLIENT4, FAR4, FAR6, OTHER4, OTHER6, OTHER_TCP_PORT, TARGET4, TARGET6,
                      TCP_PORT)

ABORTED = "ECONNABORTED"


def destroyed_remotes(document: dict) -> list[str]:
    return sorted(s["remote"] for s in document["sockets"] if s["result"] == "destroyed")


def test_purge_ends_targets_and_spares_decoys(topo, reaper):
    client = topo.client_peer
    targets = client.connect(TARGET4, TCP_PORT, count=3)
    decoys = {
        "same IP, other port": client.connect_one(TARGET4, OTHER_TCP_PORT),
        "same port, other IP": client.connect_one(OTHER4, TCP_PORT),
        "other family (IPv6), same port": client.connect_one(TARGET6, TCP_PORT),
    }
    # A listener on the target port in the client namespace, with a connection accepted from the
    # target address: its peer is TARGET4 (on an ephemeral port), its local port is TCP_PORT.
    client_listener = client.listen("tcp", "::", TCP_PORT)
    inbound = topo.server_peer.connect_one(CLIENT4, TCP_PORT, source=TARGET4)
    assert client.probe(targets + list(decoys.values())) == ["ok"] * 6
    assert topo.server_peer.probe([inbound]) == ["ok"]
    accepted_before = client.stats(client_listener)["accepted"]

    result = reaper.run(topo.client, "purge", "-o", "json", endpoint(TARGET4, TCP_PORT))

    assert result.returncode == 0, result.describe()
    document = result.doc
    assert document["command"] == "purge" and document["dry_run"] is False
    assert document["destinations"] == [endpoint(TARGET4, TCP_PORT)]
    assert destroyed_remotes(document) == [endpoint(TARGET4, TCP_PORT)] * 3, result.describe()
    assert document["counts"]["sockets_matched"] == 3
    assert document["counts"]["sockets_destroyed"] == 3
    assert document["counts"]["errors"] == 0
    assert all(s["state"] == "established" and s["family"] == "inet" for s in document["sockets"])
    assert "conn-reaper purge" in result.stderr  # the one-line summary

    assert client.probe(targets) == [ABORTED] * 3
    assert dict(zip(decoys, client.probe(list(decoys.values())))) == {name: "ok" for name in decoys}
    assert topo.server_peer.probe([inbound]) == ["ok"], "connection accepted by the client's listener"
    # The listener on the target port still accepts and serves new connections.
    fresh = topo.server_peer.connect(CLIENT4, TCP_PORT, count=2)
    assert topo.server_peer.probe(fresh) == ["ok", "ok"]
    assert client.stats(client_listener)["accepted"] == accepted_before + 2


def test_text_output_and_summary(topo, reaper):
    client = topo.client_peer
    target = client.connect_one(TARGET4, TCP_PORT)
    decoy = client.connect_one(OTHER4, TCP_PORT)
    assert client.probe([target, decoy]) == ["ok", "ok"]

    result = reaper.run(topo.client, "purge", endpoint(TARGET4, TCP_PORT))

    assert result.returncode == 0, result.describe()
    assert endpoint(TARGET4, TCP_PORT) in result.stdout
    assert "ended 1 sockets" in result.stderr, result.describe()
    assert len(result.stderr.strip().splitlines()) == 1, result.describe()
    assert client.probe([target, decoy]) == [ABORTED, "ok"]
    # Two ss-like tables, a blank line between: every cell starts under its column's title.
    sockets, entries = result.stdout.rstrip("\n").split("\n\n")
    for table, titles, row in ((sockets, ["Netid", "State", "Recv-Q", "Send-Q", "Local Address:Port", "Peer Address:Port", "Result"],
                                ["tcp", "ESTAB", "0", "0", None, endpoint(TARGET4, TCP_PORT), "ended"]),
                               (entries, ["Proto", "Original", "Reply", "Zone", "Matched", "Result"],
                                ["tcp", None, None, "0", "original-destination", "ended"])):
        header, line = table.splitlines()
        starts = [header.index(title) for title in titles]
        assert starts == sorted(starts) and header == header.rstrip() and line == line.rstrip(), table
        cells = [line[a:b].rstrip() for a, b in zip(starts, starts[1:] + [len(line)])]
        assert all(cell and " " not in cell.replace(" -> ", "") for cell in cells), (table, cells)
        assert [want == got for want, got in zip(row, cells) if want is not None] == [True] * sum(w is not None for w in row), (table, cells)


def test_purge_without_matches_exits_zero(topo, reaper):
    client = topo.client_peer
    decoy = client.connect_one(OTHER4, TCP_PORT)
    assert client.probe([decoy]) == ["ok"]

    document = reaper.ok_json(topo.client, "purge", endpoint(TARGET4, TCP_PORT))

    assert document["sockets"] == [] and document["conntrack"] == []
    assert document["counts"]["sockets_destroyed"] == 0
    assert client.probe([decoy]) == ["ok"]


def test_dual_stack_socket_matched_by_ipv4_destination(topo, reaper):
    client = topo.client_peer
    mapped_target = client.connect_one("::ffff:" + TARGET4, TCP_PORT)   # AF_INET6, IPv4 peer
    plain_target = client.connect_one(TARGET4, TCP_PORT)                 # AF_INET
    mapped_decoys = [client.connect_one("::ffff:" + OTHER4, TCP_PORT),
                     client.connect_one("::ffff:" + TARGET4, OTHER_TCP_PORT)]
    everything = [mapped_target, plain_target, *mapped_decoys]
    assert client.probe(everything) == ["ok"] * 4

    document = reaper.ok_json(topo.client, "purge", endpoint(TARGET4, TCP_PORT))

    by_family = {s["family"]: s for s in document["sockets"]}
    assert set(by_family) == {"inet", "inet6"}, document["sockets"]
    assert by_family["inet6"]["remote"] == f"[::ffff:{TARGET4}]:{TCP_PORT}"
    assert by_family["inet6"]["result"] == "destroyed"
    assert by_family["inet"]["remote"] == endpoint(TARGET4, TCP_PORT)
    assert document["counts"]["sockets_destroyed"] == 2
    assert client.probe(everything) == [ABORTED, ABORTED, "ok", "ok"]


DESTINATION_CASES = {
    # name: (destination, [(host, port) targets], [(host, port) decoys])
    "ipv6-host-port": (f"[{TARGET6}]:{TCP_PORT}",
                       [(TARGET6, TCP_PORT)],
                       [(OTHER6, TCP_PORT), (TARGET6, OTHER_TCP_PORT), (TARGET4, TCP_PORT)]),
    "ipv6-bare-address": (TARGET6,
                          [(TARGET6, TCP_PORT), (TARGET6, OTHER_TCP_PORT)],
                          [(OTHER6, TCP_PORT), (TARGET4, TCP_PORT)]),
    "ipv6-cidr-port": (f"[fd00:231::/64]:{TCP_PORT}",
                       [(TARGET6, TCP_PORT), (OTHER6, TCP_PORT)],
                       [(FAR6, TCP_PORT), (TARGET6, OTHER_TCP_PORT), (TARGET4, TCP_PORT)]),
    "ipv4-cidr-port": (f"10.231.0.0/24:{TCP_PORT}",
                       [(TARGET4, TCP_PORT), (OTHER4, TCP_PORT), ("::ffff:" + OTHER4, TCP_PORT)],
                       [(FAR4, TCP_PORT), (TARGET4, OTHER_TCP_PORT), (TARGET6, TCP_PORT)]),
    "ipv4-cidr": ("10.231.0.0/24",
                  [(TARGET4, TCP_PORT), (OTHER4, OTHER_TCP_PORT)],
                  [(FAR4, TCP_PORT), (TARGET6, TCP_PORT)]),
    "ipv4-host": (TARGET4,
                  [(TARGET4, TCP_PORT), (TARGET4, OTHER_TCP_PORT)],
                  [(OTHER4, TCP_PORT), (TARGET6, TCP_PORT)]),
    "any-address-port": (f":{OTHER_TCP_PORT}",
                         [(TARGET4, OTHER_TCP_PORT), (OTHER6, OTHER_TCP_PORT), (FAR4, OTHER_TCP_PORT)],
                         [(TARGET4, TCP_PORT), (TARGET6, TCP_PORT)]),
}


@pytest.mark.parametrize("case", list(DESTINATION_CASES))
def test_destination_forms(topo, reaper, case):
    destination, target_addrs, decoy_addrs = DESTINATION_CASES[case]
    client = topo.client_peer
    targets = [client.connect_one(host, port) for host, port in target_addrs]
    decoys = [client.connect_one(host, port) for host, port in decoy_addrs]
    assert client.probe(targets + decoys) == ["ok"] * (len(targets) + len(decoys))

    # A bare :PORT is any address: wider than a /8, it needs --force (test_cli shows it refused without).
    force = ["--force"] if destination.startswith(":") else []
    document = reaper.ok_json(topo.client, "purge", *force, destination)

    assert document["counts"]["sockets_destroyed"] == len(targets), document["sockets"]
    assert dict(zip(map(str, target_addrs), client.probe(targets))) == \
        {str(a): ABORTED for a in target_addrs}
    assert dict(zip(map(str, decoy_addrs), client.probe(decoys))) == {str(a): "ok" for a in decoy_addrs}


def test_several_destinations_in_one_call(topo, reaper):
    client = topo.client_peer
    targets = [client.connect_one(TARGET4, TCP_PORT), client.connect_one(OTHER6, OTHER_TCP_PORT)]
    decoys = [client.connect_one(OTHER4, TCP_PORT), client.connect_one(TARGET6, OTHER_TCP_PORT)]
    assert client.probe(targets + decoys) == ["ok"] * 4

    document = reaper.ok_json(topo.client, "purge", endpoint(TARGET4, TCP_PORT), endpoint(OTHER6, OTHER_TCP_PORT))

    assert document["counts"]["sockets_destroyed"] == 2
    assert client.probe(targets + decoys) == [ABORTED, ABORTED, "ok", "ok"]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_syn_sent_connect_is_aborted(topo, reaper, family):
    """A connect() whose SYNs vanish (the server drops them) is aborted by purge at once."""
    topo.blackhole(BLACKHOLE_PORT)
    target_host, decoy_host = (TARGET4, OTHER4) if family == "ipv4" else (TARGET6, OTHER6)
    client = topo.client_peer
    pending = client.connect_one(target_host, BLACKHOLE_PORT, wait=False)
    pending_decoy = client.connect_one(decoy_host, BLACKHOLE_PORT, wait=False)
    live_decoy = client.connect_one(target_host, TCP_PORT)
    results, _ = client.connect_status([pending, pending_decoy], timeout=0.3)
    assert results == ["pending", "pending"], "the SYNs must be blackholed"
    listed = reaper.ok_json(topo.client, "list", endpoint(target_host, BLACKHOLE_PORT))
    assert [s["state"] for s in listed["sockets"]] == ["syn-sent"], listed["sockets"]

    started = time.monotonic()
    document = reaper.ok_json(topo.client, "purge", endpoint(target_host, BLACKHOLE_PORT))
    results, elapsed = client.connect_status([pending], timeout=5)
    waited = time.monotonic() - started

    assert [s["state"] for s in document["sockets"]] == ["syn-sent"]
    assert document["counts"]["sockets_destroyed"] == 1
    assert results == [ABORTED]
    assert elapsed[0] is not None, "connect never ended"
    kernel.speed_bound(elapsed[0], 0.5, "a destroyed connect's end after purge returned")
    kernel.speed_bound(waited, 5, "purge and the connect's end")
    assert client.connect_status([pending_decoy], timeout=0)[0] == ["pending"]
    assert client.probe([live_decoy]) == ["ok"]


def test_state_option_limits_to_syn_sent(topo, reaper):
    topo.blackhole(BLACKHOLE_PORT)
    client = topo.client_peer
    pending = client.connect_one(TARGET4, BLACKHOLE_PORT, wait=False)
    established = client.connect_one(TARGET4, TCP_PORT)
    assert client.probe([established]) == ["ok"]

    document = reaper.ok_json(topo.client, "purge", "--state", "syn-sent", TARGET4)

    assert [s["state"] for s in document["sockets"]] == ["syn-sent"]
    assert client.connect_status([pending], timeout=2)[0] == [ABORTED]
    assert client.probe([established]) == ["ok"]


@pytest.mark.parametrize("inbound", [False, True], ids=["spared", "with---inbound"])
def test_a_portless_destination_leaves_what_it_opened_to_this_host_unless_asked(topo, reaper, inbound):
    """A port-less destination names a host, and by address also the connections that host opened to
    this one (a kubelet's to its node-local server, a peer's replication): this host serves those. They
    stay, and go with --inbound; the connection this host opened to it goes either way."""
    client, server = topo.client_peer, topo.server_peer
    client.listen("tcp", "0.0.0.0", 9099)
    opened_by_it = server.connect_one(CLIENT4, 9099, source=TARGET4)   # accepted here: local port 9099
    ours = client.connect_one(TARGET4, TCP_PORT)
    assert server.probe([opened_by_it]) == ["ok"] and client.probe([ours]) == ["ok"]

    argv = ["purge", "--no-conntrack"] + (["--inbound"] if inbound else []) + [TARGET4]
    document = reaper.ok_json(topo.client, *argv)

    ended = sorted(s["local"].rsplit(":", 1)[1] == "9099" for s in document["sockets"])
    assert ended == ([False, True] if inbound else [False]), document["sockets"]
    assert client.probe([ours]) == [ABORTED]
    assert server.probe([opened_by_it]) == (["ECONNRESET"] if inbound else ["ok"])
