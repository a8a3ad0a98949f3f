"""The agent's reaping loop against a backend that swallows SYNs: its own probe connections are
never reaped, other processes' connects toward the dead backend are aborted quickly: as conntrack
announces them where it tracks the namespace, by a SYN_SENT walk every 150 ms where it does not."""

from __future__ import annotations

import re
import time

import pytest

from lab.agent import Agent

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
