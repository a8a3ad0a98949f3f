"""Least privilege: purge and the agent do their whole job holding CAP_NET_ADMIN and nothing else,
in the two shapes the deployments give it (Deploy/):

  systemd     a non-root user with CAP_NET_ADMIN as its only ambient, permitted and bounding
              capability, no_new_privs (DynamicUser=yes, AmbientCapabilities=, CapabilityBoundingSet=,
              NoNewPrivileges=yes)
  kubernetes  UID 0 with a bounding set of CAP_NET_ADMIN alone, no_new_privs (capabilities drop ALL,
              add NET_ADMIN; allowPrivilegeEscalation: false)

and without CAP_NET_ADMIN (as nobody, or as root lacking only that capability) they fail with the
documented message and exit status, ending nothing. Everything runs in namespaces the tests create.
"""

from __future__ import annotations

import re

import pytest

from lab.agent import Agent
from lab.privileges import NET_ADMIN_BIT, NOBODY, proc_status, wrapper
from lab.netns import endpoint
from lab.topology import OTHER4, TARGET4, TCP_PORT

EPERM_HINT = "needs CAP_NET_ADMIN in this network namespace"
WITH_NET_ADMIN = ["systemd", "kubernetes"]
WITHOUT_NET_ADMIN = ["nobody-no-capabilities", "root-without-net-admin"]
EXPECTED_UID = {"systemd": NOBODY, "kubernetes": 0, "nobody-no-capabilities": NOBODY, "root-without-net-admin": 0}


def _capabilities(fields: dict) -> dict[str, int]:
    return {key: int(fields[key], 16) for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


@pytest.mark.parametrize("shape", WITH_NET_ADMIN)
def test_shape_holds_exactly_net_admin(lab, shape):
    """The setpriv shapes are what they claim: the tests below lean on that."""
    namespace = lab.namespace("shape")
    result = namespace.run([*wrapper(shape), "cat", "/proc/self/status"])
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    fields = {k: v.strip() for k, v in fields.items()}
    caps = _capabilities(fields)
    assert int(fields["Uid"].split()[1]) == EXPECTED_UID[shape], fields["Uid"]
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == NET_ADMIN_BIT, caps
    assert caps["CapAmb"] == (NET_ADMIN_BIT if shape == "systemd" else 0), caps
    assert fields["NoNewPrivs"] == "1"


@pytest.mark.parametrize("shape", WITH_NET_ADMIN)
def test_purge_with_only_net_admin(topo, reaper, shape):
    client = topo.client_peer
    targets = client.connect(TARGET4, TCP_PORT, count=3)
    decoys = client.connect(OTHER4, TCP_PORT, count=2)
    assert client.probe(targets + decoys) == ["ok"] * 5
    assert len([f for f in topo.client.conntrack_flows("ipv4", "tcp") if f.original.dst == TARGET4]) == 3

    result = reaper.run(topo.client, "purge", "-o", "json", endpoint(TARGET4, TCP_PORT), wrapper=wrapper(shape))

    assert result.returncode == 0, result.describe()
    counts = result.doc["counts"]
    assert counts["sockets_destroyed"] == 3 and counts["errors"] == 0, result.describe()
    assert counts["conntrack_deleted"] == 3, result.describe()
    assert client.probe(targets) == ["ECONNABORTED"] * 3
    assert client.probe(decoys) == ["ok"] * 2
    assert [f for f in topo.client.conntrack_flows("ipv4", "tcp") if f.original.dst == TARGET4] == []


@pytest.mark.parametrize("shape", WITH_NET_ADMIN)
def test_check_with_only_net_admin(lab, reaper, shape):
    result = reaper.run(lab.namespace("chk"), "check", wrapper=wrapper(shape))

    assert result.returncode == 0, result.describe()
    assert "verdict: conn-reaper can do its job here" in result.stdout, result.describe()
    assert re.search(r"^SOCK_DESTROY allowed\s+ok\b", result.stdout, re.M), result.describe()
    assert re.search(r"^CAP_SYS_ADMIN\s+ok\s+not held", result.stdout, re.M), result.describe()


def _agent_args() -> list[str]:
    return ["--backend", endpoint(TARGET4, TCP_PORT), "--backend", endpoint(OTHER4, TCP_PORT),
            "--interval", "100ms", "--timeout", "100ms", "--rise", "1", "--fall", "2"]


def _silence(topo, address: str) -> None:
    """The backend dies silently: the server drops everything sent to that address."""
    topo.server.iptables("-A", "INPUT", "-d", address, "-j", "DROP")


@pytest.mark.parametrize("shape", WITH_NET_ADMIN)
def test_agent_with_only_net_admin(topo, reaper_binary, shape):
    agent = Agent(topo.client, reaper_binary, _agent_args(), shape=shape)
    try:
        agent.wait_ready()
        held = proc_status(agent.process.pid)
        assert int(held["Uid"].split()[1]) == EXPECTED_UID[shape], held["Uid"]
        assert _capabilities(held)["CapEff"] == NET_ADMIN_BIT, held
        assert "host check" not in agent.log_text(None), agent.describe()

        client = topo.client_peer
        targets = client.connect(TARGET4, TCP_PORT, count=3)
        decoys = client.connect(OTHER4, TCP_PORT, count=2)
        assert client.probe(targets + decoys) == ["ok"] * 5

        _silence(topo, TARGET4)
        reaped = agent.wait_log(rf"msg=reaped backend={re.escape(endpoint(TARGET4, TCP_PORT))} "
                                r"conntrack=(\d+) .*errors=(\d+) .*sockets=(\d+)")
        conntrack, errors, sockets = map(int, reaped.groups())
        assert errors == 0 and sockets >= 3 and conntrack >= 3, reaped.group(0)
        assert client.probe(targets) == ["ECONNABORTED"] * 3
        assert client.probe(decoys) == ["ok"] * 2

        metrics = agent.metrics()
        assert metrics.get("conn_reaper_sockets_destroyed_total", backend=endpoint(TARGET4, TCP_PORT)) >= 3
        assert not [s for s in metrics.matching("conn_reaper_destroy_errors_total") if s[1] > 0], metrics.text
        assert agent.stop() == 0, agent.describe()
        assert "conn-reaper stopped" in agent.log_text(None)
    finally:
        agent.close()


@pytest.mark.parametrize("shape", WITHOUT_NET_ADMIN)
def test_purge_without_net_admin_fails_and_ends_nothing(topo, reaper, shape):
    client = topo.client_peer
    target = client.connect_one(TARGET4, TCP_PORT)

    result = reaper.run(topo.client, "purge", endpoint(TARGET4, TCP_PORT), wrapper=wrapper(shape))

    assert result.returncode == 1, result.describe()
    assert EPERM_HINT in result.stderr, result.describe()
    assert client.probe([target]) == ["ok"]
    assert len([f for f in topo.client.conntrack_flows("ipv4", "tcp") if f.original.dst == TARGET4]) == 1


@pytest.mark.parametrize("shape", WITHOUT_NET_ADMIN)
def test_check_without_net_admin_fails(lab, reaper, shape):
    result = reaper.run(lab.namespace("chk"), "check", wrapper=wrapper(shape))

    assert result.returncode == 1, result.describe()
    assert "verdict: conn-reaper cannot do its job here" in result.stdout, result.describe()
    assert EPERM_HINT in result.stdout, result.describe()


def test_agent_without_net_admin_says_so_and_ends_nothing(topo, reaper_binary):
    """The agent keeps running without the capability (probes and metrics still help) but says why
    it cannot reap, at start and on every reap, and the connections survive."""
    agent = Agent(topo.client, reaper_binary, _agent_args(), shape="nobody-no-capabilities")
    try:
        agent.wait_ready()
        start = agent.wait_log(r"level=error msg=\"host check: SOCK_DESTROY allowed\".*")
        assert EPERM_HINT in start.group(0), start.group(0)

        client = topo.client_peer
        targets = client.connect(TARGET4, TCP_PORT, count=3)
        assert client.probe(targets) == ["ok"] * 3
        _silence(topo, TARGET4)
        reaped = agent.wait_log(rf"msg=reaped backend={re.escape(endpoint(TARGET4, TCP_PORT))} "
                                r".*errors=(\d+) .*sockets=(\d+)")
        errors, sockets = map(int, reaped.groups())
        assert errors >= 1 and sockets == 0, reaped.group(0)

        ss = topo.client.run(["ss", "-tnH", "state", "established", "dst", TARGET4])
        assert len(ss.stdout.splitlines()) == 3, f"the connections must survive:\n{ss.stdout}"
        refused = [s for s in agent.metrics().matching("conn_reaper_destroy_errors_total") if s[1] > 0]
        assert refused and all(labels.get("errno") == "EPERM" for labels, _ in refused), refused
        assert agent.process.poll() is None, agent.describe()
        assert agent.stop() == 0, agent.describe()
    finally:
        agent.close()
