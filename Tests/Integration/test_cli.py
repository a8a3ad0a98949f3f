"""The CLI's edges: missing privilege, bad arguments, check, --version."""

from __future__ import annotations

import os
import re
import subprocess
import stat
from pathlib import Path

import pytest

from lab import netns
from lab.netns import endpoint
from lab.topology import OTHER4, TARGET4, TCP_PORT

EPERM_HINT = "needs CAP_NET_ADMIN in this network namespace"
NOBODY = 65534


def _usable_by_others(path: str) -> bool:
    real = Path(os.path.realpath(path))
    for directory in real.parents:
        if not os.stat(directory).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(real).st_mode
    return bool(mode & stat.S_IXOTH and mode & stat.S_IROTH)


@pytest.fixture
def unprivileged(reaper_binary):
    """(wrapper argv, binary) that run conn-reaper as nobody with no capabilities at all."""
    setpriv = netns.tool("setpriv")
    if setpriv is None:
        pytest.fail("setpriv (util-linux) is missing", pytrace=False)
    # conftest runs a copy in a mode-755 temp dir; make sure nobody can reach it.
    assert _usable_by_others(reaper_binary), f"{reaper_binary} is not executable by nobody"
    wrapper = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
               "--inh-caps=-all", "--bounding-set=-all"]
    return wrapper, reaper_binary


def test_eperm_without_cap_net_admin(topo, reaper, unprivileged):
    wrapper, binary = unprivileged
    client = topo.client_peer
    target = client.connect_one(TARGET4, TCP_PORT)
    assert client.probe([target]) == ["ok"]
    whoami = reaper.run(topo.client, "--version", wrapper=wrapper, binary=binary)
    assert whoami.returncode == 0, f"the binary must run as nobody: {whoami.describe()}"

    result = reaper.run(topo.client, "purge", endpoint(TARGET4, TCP_PORT), wrapper=wrapper, binary=binary)

    assert result.returncode == 1, result.describe()
    assert EPERM_HINT in result.stderr, result.describe()
    assert client.probe([target]) == ["ok"], "the target connection must survive a refused purge"

    as_json = reaper.run(topo.client, "purge", "-o", "json", endpoint(TARGET4, TCP_PORT),
                         wrapper=wrapper, binary=binary)
    assert as_json.returncode == 1, as_json.describe()
    document = as_json.doc
    assert document["counts"]["sockets_destroyed"] == 0 and document["counts"]["errors"] > 0
    assert any(EPERM_HINT in error for error in document["errors"]), document["errors"]
    assert [s["result"] for s in document["sockets"]] == ["error"], document["sockets"]
    assert client.probe([target]) == ["ok"]
    assert len([f for f in topo.client.conntrack_flows("ipv4", "tcp") if f.original.dst == TARGET4]) == 1


def test_check_fails_without_cap_net_admin(lab, reaper, unprivileged):
    wrapper, binary = unprivileged
    namespace = lab.namespace("chk")

    result = reaper.run(namespace, "check", wrapper=wrapper, binary=binary)

    assert result.returncode != 0, result.describe()
    assert re.search(r"^SOCK_DESTROY allowed\s+FAIL\b", result.stdout, re.M), result.describe()
    assert "verdict: conn-reaper cannot do its job here" in result.stdout


BAD_DESTINATIONS = [
    "10.0.0.0.1",
    "10.0.0.1:0",
    "10.0.0.1:65536",
    "10.0.0.0/33",
    "[fd00::1",
    "[fd00::1/129]:80",
    "fd00::zz",
    "backend.example:80",
    "300.1.1.1",
]


@pytest.mark.parametrize("bad", BAD_DESTINATIONS)
def test_bad_destination_exits_64_and_touches_nothing(topo, reaper, bad):
    client = topo.client_peer
    target = client.connect_one(TARGET4, TCP_PORT)
    assert client.probe([target]) == ["ok"]

    # A valid destination next to the bad one must not be acted on either.
    result = reaper.run(topo.client, "purge", endpoint(TARGET4, TCP_PORT), bad)

    assert result.returncode == 64, result.describe()
    assert f"invalid destination '{bad}'" in result.stderr, result.describe()
    assert client.probe([target]) == ["ok"]
    assert len([f for f in topo.client.conntrack_flows("ipv4", "tcp") if f.original.dst == TARGET4]) == 1


@pytest.mark.parametrize("args", [
    ["purge"],
    ["purge", "--proto", "sctp", TARGET4],
    ["purge", "--state", "bogus", TARGET4],
    ["purge", "--state", "listen", TARGET4],
    ["purge", "--no-sockets", "--no-conntrack", TARGET4],
    ["list", "-o", "yaml", TARGET4],
], ids=lambda args: " ".join(args))
def test_bad_options_exit_64(topo, reaper, args):
    client = topo.client_peer
    target = client.connect_one(TARGET4, TCP_PORT)
    decoy = client.connect_one(OTHER4, TCP_PORT)
    assert client.probe([target, decoy]) == ["ok", "ok"]

    result = reaper.run(topo.client, *args)

    assert result.returncode == 64, result.describe()
    assert result.stderr.strip(), "a message must say what is wrong"
    assert client.probe([target, decoy]) == ["ok", "ok"]


def test_check_in_fresh_namespace(lab, reaper):
    namespace = lab.namespace("chk")   # only lo, up

    result = reaper.run(namespace, "check")

    assert result.returncode == 0, result.describe()
    assert re.search(r"^SOCK_DESTROY supported\s+ok\b", result.stdout, re.M), result.describe()
    assert re.search(r"^SOCK_DESTROY allowed\s+ok\b", result.stdout, re.M), result.describe()
    assert "verdict: conn-reaper can do its job here" in result.stdout, result.describe()


def test_version(lab, reaper):
    namespace = lab.namespace("ver")
    result = reaper.run(namespace, "--version")
    assert result.returncode == 0, result.describe()
    # The version, then the revision of a `make dist` build ("unknown" for a plain swift build).
    assert re.fullmatch(r"\d+\.\d+\.\d+ \(revision ([0-9a-f]{7,40}(-dirty)?|unknown)\)", result.stdout.strip()), result.describe()


@pytest.mark.parametrize("wide", ["0.0.0.0/0", "10.0.0.0/7", f":{TCP_PORT}", "[::/0]:80", "[fd00::/31]:80"])
def test_a_destination_wider_than_a_slash_8_needs_force_and_touches_nothing(topo, reaper, wide):
    client = topo.client_peer
    target = client.connect_one(TARGET4, TCP_PORT)
    decoy = client.connect_one(OTHER4, TCP_PORT)
    assert client.probe([target, decoy]) == ["ok", "ok"]

    result = reaper.run(topo.client, "purge", endpoint(TARGET4, TCP_PORT), wide)

    assert result.returncode == 64, result.describe()
    assert f"destination '{wide}' is wider than a /8 (IPv4) or /32 (IPv6)" in result.stderr, result.describe()
    assert "--force" in result.stderr, result.describe()
    assert client.probe([target, decoy]) == ["ok", "ok"]
    assert len([f for f in topo.client.conntrack_flows("ipv4", "tcp") if f.original.dst == TARGET4]) == 1


def test_a_wide_destination_with_force_purges_and_a_dry_run_needs_no_force(topo, reaper):
    client = topo.client_peer
    target = client.connect_one(TARGET4, TCP_PORT)
    decoy = client.connect_one(OTHER4, TCP_PORT)
    looked = reaper.run(topo.client, "purge", "--dry-run", f":{TCP_PORT}")
    assert looked.returncode == 0, looked.describe()
    assert client.probe([target, decoy]) == ["ok", "ok"]

    result = reaper.run(topo.client, "purge", "--force", f":{TCP_PORT}")

    assert result.returncode == 0, result.describe()
    assert client.probe([target, decoy]) == ["ECONNABORTED", "ECONNABORTED"]


#: A DNS-like server: an unconnected UDP socket on 0.0.0.0, answering every datagram.
UDP_SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    data, peer = s.recvfrom(512)
    s.sendto(data, peer)
"""


def udp_asks(namespace, port: int) -> str:
    code = ("import socket, sys\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)\n"
            f"s.sendto(b'q', ('127.0.0.1', {port}))\n"
            "try:\n    print(s.recvfrom(512)[0].decode())\nexcept OSError as e:\n    print(type(e).__name__)\n")
    return namespace.run(["python3", "-c", code]).stdout.strip()


def test_state_close_never_takes_an_unconnected_udp_socket(topo, reaper):
    port = 25353
    server = topo.client.popen(["python3", "-u", "-c", UDP_SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        assert udp_asks(topo.client, port) == "q"

        result = reaper.run(topo.client, "purge", "--force", "--proto", "udp", "--state", "established,close",
                            "-o", "json", "0.0.0.0/0", f":{port}")

        assert result.returncode == 0, result.describe()
        assert result.doc["sockets"] == [], result.doc["sockets"]
        assert udp_asks(topo.client, port) == "q", "the server's unconnected socket must keep answering"
    finally:
        server.kill()
        server.wait()
