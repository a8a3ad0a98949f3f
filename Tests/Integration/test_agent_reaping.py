"""The agent's reaping loop against a backend that swallows SYNs: its own probe connections are
never reaped, other processes' connects toward the dead backend are aborted quickly: as conntrack
announces them where it tracks the namespace, by a SYN_SENT walk every 150 ms where it does not."""

from __future__ import annotations

import re
import time

import pytest

from lab.agent import Agent
from lab.netns import wait_for

DEAD, LIVE, PORT = "10.235.0.2", "10.235.0.3", 8080


@pytest.mark.parametrize("tracked", [False, True], ids=["walking", "conntrack-announces"])
def test_agent_spares_its_own_probes_and_aborts_connects_to_a_dead_backend(tracked, lab, reaper_binary, tmp_path):
    client = lab.namespace("client")
    server = lab.namespace("server")
    lab.link(client, server, ["10.235.0.1/24"], [f"{DEAD}/24", f"{LIVE}/24"])
    if tracked:
        client.enable_conntrack()
    server.iptables("-A", "INPUT", "-d", DEAD, "-p", "tcp", "--syn", "-j", "DROP")   # dead: SYNs vanish
    server.peer().listen("tcp", LIVE, PORT)
    connector = client.peer()
    agent = Agent(client, reaper_binary, ["--backend", f"{DEAD}:{PORT}", "--backend", f"{LIVE}:{PORT}",
                                          "--interval", "200ms", "--timeout", "150ms", "--listen", "127.0.0.1:9750"],
                  listen="127.0.0.1:9750")
    agent.wait_listening()
    time.sleep(2.0)   # dead after two failed probes, then passes while its probes sit in SYN_SENT
    outcomes = [connector.connect_outcome(DEAD, PORT, timeout=5) for _ in range(5)]
    agent.stop()
    log = agent.log_text(None)
    print(f"\n{'announced' if tracked else 'walked'}: connects aborted after {[o[1] for o in outcomes]} s")
    assert all(outcome[0] == "ECONNABORTED" for outcome in outcomes), f"{outcomes}\n{log}"
    # Announced: ended as it comes (the bound leaves room for a loaded machine); walked: within a pass.
    bound = 0.1 if tracked else 0.5
    assert max(float(outcome[1]) for outcome in outcomes) < bound, f"connects aborted after {outcomes} s\n{log}"
    assert f"announced_by_conntrack={'true' if tracked else 'false'}" in log, log
    reaps = [line for line in log.splitlines() if "msg=reaped" in line and f"backend={DEAD}:{PORT}" in line]
    assert reaps, log
    counts = [int(re.search(r" sockets=(\d+)", line).group(1)) for line in reaps]
    # Only the connector's five connects may ever have been ended: never a probe of the agent.
    assert sum(counts) == 5, f"{counts}\n{log}"
    assert "backend up" in log and f"backend={LIVE}:{PORT}" in log


def test_at_log_level_debug_every_ended_socket_has_its_own_audit_line(lab, reaper_binary):
    """The audit names every socket it ended: at `log_level: debug`, a line per socket with its
    4-tuple, cookie and reason, as many as the pass's `sockets=` count, naming exactly the client's
    connections toward the dead backend (never the agent's probes, never the live backend's)."""
    client = lab.namespace("client")
    server = lab.namespace("server")
    lab.link(client, server, ["10.235.0.1/24"], [f"{DEAD}/24", f"{LIVE}/24"])
    listener = server.peer()
    listener.listen("tcp", DEAD, PORT)
    listener.listen("tcp", LIVE, PORT)
    connector = client.peer()
    toward_dead = connector.connect(DEAD, PORT, count=4)
    toward_live = connector.connect(LIVE, PORT, count=2)
    assert connector.probe(toward_dead + toward_live) == ["ok"] * 6
    local = sorted(line.split()[2] for line in client.run(
        ["ss", "-Htn", "state", "established", "dst", f"{DEAD}:{PORT}"]).stdout.splitlines())
    assert len(local) == 4, local
    agent = Agent(client, reaper_binary, ["--backend", f"{DEAD}:{PORT}", "--backend", f"{LIVE}:{PORT}", "--log-level", "debug",
                                          "--interval", "200ms", "--timeout", "150ms", "--listen", "127.0.0.1:9750"],
                  listen="127.0.0.1:9750")
    agent.wait_listening()
    agent.wait_states({f"default/{DEAD}:{PORT}": "up", f"default/{LIVE}:{PORT}": "up"})
    server.iptables("-I", "INPUT", "-d", DEAD, "-j", "DROP")
    server.iptables("-I", "OUTPUT", "-s", DEAD, "-j", "DROP")
    wait_for(lambda: connector.probe(toward_dead, timeout=0.5) == ["ECONNABORTED"] * 4, 5, "the dead backend's 4 ended")
    time.sleep(0.3)
    reaped = agent.find("reaped", backend=f"{DEAD}:{PORT}")
    audit = agent.find("socket ended")
    info = agent.log_text(30)
    assert sum(int(line.fields["sockets"]) for line in reaped) == 4, info
    assert sorted(line.fields["local"] for line in audit) == local, f"{[line.text for line in audit]}\n{local}"
    assert {line.fields["remote"] for line in audit} == {f"{DEAD}:{PORT}"}, info
    assert {line.fields["reason"] for line in audit} == {"dead"}, info
    assert all(int(line.fields["cookie"]) > 0 and line.fields["state"] == "ESTAB" for line in audit), info
    assert connector.probe(toward_live) == ["ok", "ok"]
    print(f"\nlog_level debug: {len(audit)} 'socket ended' lines for {sum(int(l.fields['sockets']) for l in reaped)} ended, "
          f"e.g. {audit[0].text.split('msg=')[1][:160]}")
    agent.stop()
