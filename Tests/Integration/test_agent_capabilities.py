"""The agent sheds every capability but CAP_NET_ADMIN before it runs anything, on every thread."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

NET_ADMIN = 1 << 12


def capability_sets(pid: int) -> list[dict[str, int]]:
    sets = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = {}
        for line in (task / "status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
                fields[name] = int(value.strip(), 16)
        sets.append(fields)
    return sets


def test_agent_started_as_root_keeps_only_net_admin(lab, reaper_binary):
    namespace = lab.namespace("caps")
    agent = namespace.popen([reaper_binary, "run", "--backend", "127.0.0.1:1", "--listen", "127.0.0.1:9748"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    namespace.wait_until_answers("http://127.0.0.1:9748/healthz", timeout=5)
    threads = capability_sets(agent.pid)
    assert len(threads) > 1, threads  # event loops and the cooperative pool: capabilities are per thread
    for sets in threads:
        assert sets["CapEff"] == NET_ADMIN, sets
        assert sets["CapPrm"] == NET_ADMIN, sets
        assert sets["CapBnd"] == NET_ADMIN, sets   # nothing dropped can come back through an exec
    agent.terminate()
    _, stderr = agent.communicate(timeout=10)
    assert "effective=0x1000" in stderr, stderr


SYS_ADMIN = 1 << 21


SYS_PTRACE = 1 << 19


@pytest.mark.parametrize("netns, kept", [
    ("[/run/netns/{name}]", NET_ADMIN | SYS_ADMIN),
    # /proc/PID/ns/net of a process holding capabilities the agent lacks needs CAP_SYS_PTRACE.
    ("all", NET_ADMIN | SYS_ADMIN | SYS_PTRACE),
])
def test_agent_with_netns_configured_keeps_what_entering_namespaces_needs(lab, reaper_binary, tmp_path, netns, kept):
    namespace = lab.namespace("capsns")
    config = tmp_path / "agent.yaml"
    config.write_text(f"listen: 127.0.0.1:9748\nnetns: {netns.format(name=namespace.name)}\n"
                      "pools:\n  - name: p\n    backends: [\"127.0.0.1:1\"]\n")
    agent = namespace.popen([reaper_binary, "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    namespace.wait_until_answers("http://127.0.0.1:9748/healthz", timeout=5)
    threads = capability_sets(agent.pid)
    assert len(threads) > 1, threads
    for sets in threads:
        assert sets["CapEff"] == kept, sets
        assert sets["CapPrm"] == kept, sets
        assert sets["CapBnd"] == kept, sets
    agent.terminate()
    _, stderr = agent.communicate(timeout=10)
    assert f"effective=0x{kept:x}" in stderr, stderr


def test_agent_run_netns_flag_keeps_sys_admin(lab, reaper_binary):
    namespace = lab.namespace("capsflag")
    agent = namespace.popen([reaper_binary, "run", "--backend", "127.0.0.1:1", "--listen", "127.0.0.1:9748",
                             "--netns", f"/run/netns/{namespace.name}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    namespace.wait_until_answers("http://127.0.0.1:9748/healthz", timeout=5)
    assert all(sets["CapEff"] == NET_ADMIN | SYS_ADMIN for sets in capability_sets(agent.pid))
    agent.terminate()
    agent.communicate(timeout=10)
