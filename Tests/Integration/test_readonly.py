"""--dry-run and list report what would go and change nothing."""

from __future__ import annotations

from lab.netns import endpoint
from lab.topology import OTHER4, TARGET4, TCP_PORT, UDP_PORT

TCP_INFO_FIELDS = {"unacked", "retransmits", "backoff", "last_ack_recv_ms", "last_data_sent_ms", "rtt_us",
                   "total_retrans"}
# The document's keys as the CLI contract lists them.
TOP_FIELDS = {"command", "dry_run", "destinations", "sockets", "conntrack", "counts", "errors", "extra_rounds",
              "duration_ms"}
SOCKET_FIELDS = {"proto", "family", "state", "local", "remote", "cookie", "recv_q", "send_q", "timer", "retrans",
                 "tcp_info", "result", "error"}
CONNTRACK_FIELDS = {"proto", "family", "original", "reply", "zone", "id", "mark", "timeout", "matched", "result",
                    "error"}
COUNT_FIELDS = {"sockets_matched", "sockets_destroyed", "conntrack_matched", "conntrack_deleted", "errors"}


def flows_to(flows, host, port):
    return [f for f in flows if f.original.dst == host and f.original.dport == port]


def test_dry_run_changes_nothing(topo, reaper):
    client = topo.client_peer
    targets = client.connect(TARGET4, TCP_PORT, count=2)
    decoy = client.connect_one(OTHER4, TCP_PORT)
    assert client.probe(targets + [decoy]) == ["ok"] * 3
    flows_before = flows_to(topo.client.conntrack_flows("ipv4", "tcp"), TARGET4, TCP_PORT)
    assert len(flows_before) == 2

    document = reaper.ok_json(topo.client, "purge", "--dry-run", endpoint(TARGET4, TCP_PORT))

    assert document["dry_run"] is True
    assert [s["result"] for s in document["sockets"]] == ["would-destroy"] * 2
    assert [e["result"] for e in document["conntrack"]] == ["would-delete"] * 2
    assert document["counts"]["sockets_matched"] == 2
    assert document["counts"]["sockets_destroyed"] == 0 and document["counts"]["conntrack_deleted"] == 0
    flows_after = flows_to(topo.client.conntrack_flows("ipv4", "tcp"), TARGET4, TCP_PORT)
    assert sorted(repr(f.original) for f in flows_after) == sorted(repr(f.original) for f in flows_before)
    assert client.probe(targets + [decoy]) == ["ok"] * 3

    text = reaper.run(topo.client, "purge", "--dry-run", endpoint(TARGET4, TCP_PORT))
    assert text.returncode == 0, text.describe()
    assert "would" in text.stderr, text.describe()
    assert client.probe(targets) == ["ok"] * 2


def test_list_shows_tcp_info_and_changes_nothing(topo, reaper):
    client = topo.client_peer
    tcp_target = client.connect_one(TARGET4, TCP_PORT)
    udp_target = client.connect_one(TARGET4, UDP_PORT, proto="udp")
    assert client.probe([tcp_target, udp_target]) == ["ok", "ok"]

    document = reaper.ok_json(topo.client, "list", "--proto", "all", TARGET4)

    assert document["command"] == "list"
    sockets = {s["proto"]: s for s in document["sockets"]}
    assert set(sockets) == {"tcp", "udp"}, document["sockets"]
    tcp = sockets["tcp"]
    assert tcp["result"] == "listed" and tcp["state"] == "established"
    assert tcp["remote"] == endpoint(TARGET4, TCP_PORT)
    assert tcp["tcp_info"] is not None and set(tcp["tcp_info"]) >= TCP_INFO_FIELDS, tcp
    assert tcp["tcp_info"]["rtt_us"] > 0 and tcp["tcp_info"]["unacked"] == 0
    assert int(tcp["cookie"]) > 0
    assert sockets["udp"]["result"] == "listed" and sockets["udp"].get("tcp_info") is None
    assert {e["result"] for e in document["conntrack"]} == {"listed"}
    assert {e["proto"] for e in document["conntrack"]} == {"tcp", "udp"}
    assert document["counts"]["sockets_destroyed"] == 0 and document["counts"]["conntrack_deleted"] == 0
    assert client.probe([tcp_target, udp_target]) == ["ok", "ok"]
    assert len(flows_to(topo.client.conntrack_flows("ipv4"), TARGET4, TCP_PORT)) == 1

    text = reaper.run(topo.client, "list", TARGET4)
    assert text.returncode == 0, text.describe()
    assert endpoint(TARGET4, TCP_PORT) in text.stdout and "rtt:" in text.stdout, text.describe()
    assert client.probe([tcp_target]) == ["ok"]


def test_json_document_has_every_contract_key(topo, reaper):
    """Every key the contract lists is present; optional values are null, not missing."""
    client = topo.client_peer
    tcp_target = client.connect_one(TARGET4, TCP_PORT)
    udp_target = client.connect_one(TARGET4, UDP_PORT, proto="udp")
    assert client.probe([tcp_target, udp_target]) == ["ok", "ok"]

    listed = reaper.ok_json(topo.client, "list", "--proto", "all", TARGET4)
    purged = reaper.ok_json(topo.client, "purge", "--proto", "all", TARGET4)

    missing = []
    for name, document in (("list", listed), ("purge", purged)):
        assert len(document["sockets"]) == 2 and len(document["conntrack"]) == 2, document
        missing += [f"{name}: top-level {k}" for k in sorted(TOP_FIELDS - set(document))]
        missing += [f"{name}: counts.{k}" for k in sorted(COUNT_FIELDS - set(document["counts"]))]
        for s in document["sockets"]:
            missing += [f"{name}: {s['proto']} socket .{k}" for k in sorted(SOCKET_FIELDS - set(s))]
        for e in document["conntrack"]:
            missing += [f"{name}: {e['proto']} conntrack entry .{k}" for k in sorted(CONNTRACK_FIELDS - set(e))]
    assert missing == [], "keys missing from the -o json document: " + ", ".join(missing)
    assert client.probe([tcp_target, udp_target]) == ["ECONNABORTED", "ECONNABORTED"]
