"""The conntrack table full: the kernel drops every new flow's first packet, so the agent's probes fail
and every backend looks down. The agent must say why (a log line and a gauge, once), end nothing (the
all-down guard), and recover when the table drains.

`nf_conntrack_max` is writable only in the host namespace and limits each namespace's own count, so
the test lowers it for a few seconds and restores it whatever happens. It changes nothing for a
namespace holding fewer entries than the lowered limit; on a shared machine it could drop another
test's new flows, so it runs only where the host namespace itself tracks little (CI runs the suite
one test at a time)."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import unavailable
from lab.agent import Agent, pool_yaml
from lab.netns import endpoint, wait_for
from lab.topology import OTHER4, TARGET4, TCP_PORT

LIMIT_FILE = Path("/proc/sys/net/netfilter/nf_conntrack_max")
LISTEN = ("127.0.0.1", 19761)
LOWERED = 80


def namespace_count(namespace) -> int:
    return int(namespace.run(["cat", "/proc/sys/net/netfilter/nf_conntrack_count"]).stdout)


def fill(namespace, entries: int) -> None:
    """UDP entries that live 120 s, from addresses nothing uses."""
    script = "\n".join(f"conntrack -I -p udp -s 10.243.{i // 200}.{i % 200 + 1} -d 10.243.9.9 --sport {30000 + i} "
                       f"--dport 53 -t 120 2>/dev/null" for i in range(entries))
    namespace.run(["bash", "-c", script + "\ntrue"])


def test_a_full_conntrack_table_is_named_and_nothing_is_reaped(topo, reaper_binary, tmp_path):
    host_count = int(Path("/proc/sys/net/netfilter/nf_conntrack_count").read_text())
    if host_count > LOWERED // 4:
        unavailable(f"the host namespace tracks {host_count} flows: lowering the limit to {LOWERED} would drop its own")
    # The agent's status endpoint is scraped over loopback: kept out of conntrack, as a node keeps its
    # own health checks, so the gauge can be read while the table is full.
    topo.client.iptables("-t", "raw", "-A", "OUTPUT", "-o", "lo", "-j", "CT", "--notrack")
    config = tmp_path / "agent.yaml"
    config.write_text(pool_yaml([{
        "name": "api", "backends": [endpoint(TARGET4, TCP_PORT), endpoint(OTHER4, TCP_PORT)],
        "probe": {"type": "tcp", "interval": "200ms", "timeout": "150ms", "fall": 2, "rise": 1}}], listen=LISTEN))
    agent = Agent(topo.client, reaper_binary, ["--config", str(config)], listen=LISTEN)
    agent.wait_ready()
    agent.wait_states({f"api/{endpoint(TARGET4, TCP_PORT)}": "up", f"api/{endpoint(OTHER4, TCP_PORT)}": "up"})
    held = [topo.client_peer.connect_one(TARGET4, TCP_PORT), topo.client_peer.connect_one(OTHER4, TCP_PORT)]
    assert topo.client_peer.probe(held) == ["ok", "ok"]
    assert agent.metrics().value("conn_reaper_conntrack_table_full") == 0

    original = LIMIT_FILE.read_text().strip()
    try:
        LIMIT_FILE.write_text(str(LOWERED))
        fill(topo.client, LOWERED - namespace_count(topo.client))
        started = time.monotonic()
        full = agent.wait_line(lambda line: line.msg.startswith("conntrack table full"), timeout=6, since=started - 1)
        assert full is not None, agent.log_text()
        assert full.fields["limit"] == str(LOWERED) and int(full.fields["entries"]) >= LOWERED * 0.95, full.text
        wait_for(lambda: agent.metrics().value("conn_reaper_conntrack_table_full") == 1, 5, "the gauge says full")
        # New flows are dropped, so the probes fail: neither backend may be found dead (before the
        # fix one was, while early drops let the other's probes through, and its connection was ended).
        time.sleep(2.0)
        assert agent.reaps() == [] and not agent.find("backend dead"), agent.log_text()
        assert agent.find("not dead: nothing answers its probes, but the conntrack table here is full and drops new flows")
        assert topo.client_peer.probe(held) == ["ok", "ok"], "established connections are left alone"
    finally:
        LIMIT_FILE.write_text(original)
    topo.client.run(["conntrack", "-D", "-p", "udp", "-d", "10.243.9.9"], check=False)
    drained = agent.wait_line(lambda line: line.msg == "conntrack table no longer full", timeout=6)
    assert drained is not None, agent.log_text()
    named = [line for line in agent.log() if line.msg.startswith("conntrack table full")]
    assert len(named) == 1, f"named once, not on every look: {[line.text for line in named]}"
    agent.wait_states({f"api/{endpoint(TARGET4, TCP_PORT)}": "up", f"api/{endpoint(OTHER4, TCP_PORT)}": "up"}, timeout=10)
    assert agent.metrics().value("conn_reaper_conntrack_table_full") == 0
    assert agent.reaps() == [] and topo.client_peer.probe(held) == ["ok", "ok"]
    assert agent.stop() == 0
