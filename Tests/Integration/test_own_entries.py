"""The agent's own connection toward a backend it reaps keeps its conntrack entry, as it keeps its
socket: a probe whose entry went would lose its NAT mapping mid-connection. The other entries toward
the dead backend go, by exact deletes (a few) or where a flush would otherwise be sent (300).

The agent's probes toward a dead backend are short (each ends at its timeout, right where the pass
that follows its failure starts), so the own connection here is one the agent holds all along: a
wrapper connects to the backend and execs the agent with that socket open. The agent knows its own
sockets by the same test whatever opened them (its /proc/self/fd)."""

from __future__ import annotations

import sys

import pytest

from lab.agent import Agent, pool_yaml
from lab.netns import wait_for

DEAD, LIVE, PORT = "10.236.0.2", "10.236.0.3", 8080

HOLDER = """\
import os, socket, sys
held = socket.create_connection((sys.argv[1], int(sys.argv[2])))
held.set_inheritable(True)
with open(sys.argv[3], "w") as out:
    out.write(str(held.getsockname()[1]))
os.execv(sys.argv[4], sys.argv[4:])
"""


def two_backends(lab):
    """A client namespace that conntrack tracks, and a server answering on DEAD and LIVE."""
    client = lab.namespace("client")
    server = lab.namespace("server")
    lab.link(client, server, ["10.236.0.1/24"], [f"{DEAD}/24", f"{LIVE}/24"])
    client.enable_conntrack()
    listener = server.peer()
    listener.listen("tcp", DEAD, PORT)
    listener.listen("tcp", LIVE, PORT)
    return client, server, listener


def local_ports(namespace, host, port):
    lines = namespace.run(["ss", "-Htn", "state", "established", "dst", f"{host}:{port}"]).stdout.splitlines()
    return sorted(int(line.split()[2].rsplit(":", 1)[1]) for line in lines)


def entry_ports(namespace, host, port):
    return sorted(f.original.sport for f in namespace.conntrack_flows("ipv4", "tcp")
                  if f.original.dst == host and f.original.dport == port)


@pytest.mark.parametrize("count", [4, 300], ids=["exact-deletes", "flush-sized"])
def test_the_agents_own_connection_keeps_its_entry_while_the_others_go(count, lab, reaper_binary, tmp_path):
    client, server, _listener = two_backends(lab)
    connector = client.peer()
    toward_dead = connector.connect(DEAD, PORT, count=count)
    assert connector.probe(toward_dead) == ["ok"] * count
    others = local_ports(client, DEAD, PORT)
    assert len(others) == count, others

    holder, held_port_file = tmp_path / "hold_and_exec.py", tmp_path / "held_port"
    holder.write_text(HOLDER)
    binary = tmp_path / "agent-holding-a-connection"
    binary.write_text(f"#!/bin/sh\nexec {sys.executable} {holder} {DEAD} {PORT} {held_port_file} {reaper_binary} \"$@\"\n")
    binary.chmod(0o755)
    agent = Agent(client, str(binary), ["--backend", f"{DEAD}:{PORT}", "--backend", f"{LIVE}:{PORT}",
                                        "--interval", "200ms", "--timeout", "150ms", "--listen", "127.0.0.1:9751"],
                  listen="127.0.0.1:9751")
    agent.wait_listening()
    agent.wait_states({f"default/{DEAD}:{PORT}": "up", f"default/{LIVE}:{PORT}": "up"})
    held = int(held_port_file.read_text())
    assert held not in others
    assert held in entry_ports(client, DEAD, PORT)

    # Dead: its new connections' SYNs vanish (the probes fail); established flows still pass.
    server.iptables("-I", "INPUT", "-d", DEAD, "-p", "tcp", "--syn", "-j", "DROP")
    wait_for(lambda: sum(int(line.fields["sockets"]) for line in agent.reaps(f"{DEAD}:{PORT}")) >= count, 10,
             f"the dead backend's {count} connections reaped")
    reaped = agent.reaps(f"{DEAD}:{PORT}")
    info = agent.log_text(40)
    assert sum(int(line.fields["sockets"]) for line in reaped) == count, info
    assert connector.probe(toward_dead, timeout=0.5) == ["ECONNABORTED"] * count, info

    # By effect, in the table itself: the held connection's entry is there, none of the others'.
    left = entry_ports(client, DEAD, PORT)
    assert held in left, f"own entry {held} deleted; left {left}\n{info}"
    assert not set(others) & set(left), f"{sorted(set(others) & set(left))[:10]} of the others' entries left\n{info}"
    agent.stop()
    print(f"\n{count} others: their entries gone, the agent's own ({held}) kept; "
          f"reaped lines {[line.fields.get('conntrack') for line in reaped]}")


@pytest.mark.parametrize("zones,taken", [(None, {"0"}), ("[0, 7]", {"0", "7"})], ids=["default-zone-0", "zones-0-and-7"])
def test_the_agent_takes_a_dead_backends_entries_only_from_its_pools_zones(zones, taken, lab, reaper_binary, tmp_path):
    """The same dead address in zone 0 and zone 7 (another network's host may have it there): the
    agent's reap takes zone 0's, and zone 7's only where the pool names it (`conntrack_zones`)."""
    client, server, _listener = two_backends(lab)
    for zone in ("0", "7"):
        for sport in range(30000, 30004):
            client.run(["conntrack", "-I", "-p", "tcp", "-s", "10.236.0.1", "-d", DEAD, "--sport", str(sport),
                        "--dport", str(PORT), "-t", "600", "--state", "ESTABLISHED", "-w", zone])
    def zones_toward_dead():
        return sorted(f.line.split("zone=")[1].split()[0] if "zone=" in f.line else "0"
                      for f in client.conntrack_flows("ipv4", "tcp") if f.original.dst == DEAD and 30000 <= f.original.sport < 30004)
    assert zones_toward_dead() == ["0"] * 4 + ["7"] * 4

    pool = {"name": "api", "backends": [f"{DEAD}:{PORT}", f"{LIVE}:{PORT}"],
            "probe": {"type": "tcp", "interval": "200ms", "timeout": "150ms"}}
    if zones:
        pool["conntrack_zones"] = zones
    config = tmp_path / "agent.yaml"
    config.write_text(pool_yaml([pool], listen=("127.0.0.1", 9751)))
    agent = Agent(client, reaper_binary, ["--config", str(config)], listen="127.0.0.1:9751")
    agent.wait_listening()
    agent.wait_states({f"api/{DEAD}:{PORT}": "up", f"api/{LIVE}:{PORT}": "up"})
    server.iptables("-I", "INPUT", "-d", DEAD, "-p", "tcp", "--syn", "-j", "DROP")
    wait_for(lambda: agent.reaps(f"{DEAD}:{PORT}"), 10, "the dead backend reaped")
    info = agent.log_text(20)
    left = ["7"] * 4 if taken == {"0"} else []
    assert zones_toward_dead() == left, info
    agent.stop()
