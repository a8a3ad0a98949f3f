"""The agent's reaping loop against a backend that swallows SYNs: its own probe connections are
never reaped, other processes' connects toward the dead backend are aborted quickly: as conntrack
announces them where it tracks the namespace, by a SYN_SENT walk every 150 ms where it does not."""

from __future__ import annotations

import re
import subprocess

import pytest
import textwrap
import time

DEAD, LIVE, PORT = "10.235.0.2", "10.235.0.3", 8080

LISTENER = textwrap.dedent("""
    import socket, time
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("%s", %d)); s.listen(64)
    print("ready", flush=True)
    while True:
        s.accept()
""" % (LIVE, PORT))

CONNECTOR = textwrap.dedent("""
    import errno, socket, sys, time
    s = socket.socket(); s.settimeout(5)
    started = time.monotonic()
    try:
        s.connect(("%s", %d)); print("connected")
    except OSError as error:
        print(errno.errorcode.get(error.errno, str(error)), round(time.monotonic() - started, 3))
""" % (DEAD, PORT))


@pytest.mark.parametrize("tracked", [False, True], ids=["walking", "conntrack-announces"])
def test_agent_spares_its_own_probes_and_aborts_connects_to_a_dead_backend(tracked, lab, reaper_binary, tmp_path):
    client = lab.namespace("client")
    server = lab.namespace("server")
    lab.link(client, server, ["10.235.0.1/24"], [f"{DEAD}/24", f"{LIVE}/24"])
    if tracked:
        client.enable_conntrack()
    server.iptables("-A", "INPUT", "-d", DEAD, "-p", "tcp", "--syn", "-j", "DROP")   # dead: SYNs vanish
    (tmp_path / "listener.py").write_text(LISTENER)
    (tmp_path / "connector.py").write_text(CONNECTOR)
    listener = server.popen(["python3", str(tmp_path / "listener.py")], stdout=subprocess.PIPE, text=True)
    assert listener.stdout.readline().strip() == "ready"
    agent = client.popen([reaper_binary, "run", "--backend", f"{DEAD}:{PORT}", "--backend", f"{LIVE}:{PORT}",
                          "--interval", "200ms", "--timeout", "150ms", "--listen", "127.0.0.1:9750"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)   # dead after two failed probes, then passes while its probes sit in SYN_SENT
    outcomes = []
    for _ in range(5):
        result = client.run(["python3", str(tmp_path / "connector.py")])
        outcomes.append(result.stdout.split())
    agent.terminate()
    _, log = agent.communicate(timeout=10)
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
