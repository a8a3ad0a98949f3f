"""The standard two-namespace topology of the kernel tests, and a runner for the conn-reaper binary.

    client ns "cli"                                   server ns "srv"
    to-srv: 10.231.0.1/24, fd00:231::1/64   <veth>    to-cli: 10.231.0.2, 10.231.0.3 (/24),
    routes: 10.231.1.0/24 via 10.231.0.2                      10.231.1.2/24 (a second subnet),
            fd00:231:1::/64 via fd00:231::2                   fd00:231::2, fd00:231::3 (/64),
    conntrack enabled (iptables OUTPUT ctstate rule)          fd00:231:1::2/64

The server runs a sockets peer with dual-stack TCP echo listeners on TCP_PORT and OTHER_TCP_PORT and
UDP echo sockets bound to each server address on UDP_PORT and OTHER_UDP_PORT. The client runs a
sockets peer that opens connections. All addresses live only inside these namespaces.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from typing import Sequence

from lab.netns import Lab, Namespace
from lab.traffic import Peer

CLIENT4, TARGET4, OTHER4, FAR4 = "10.231.0.1", "10.231.0.2", "10.231.0.3", "10.231.1.2"
CLIENT6, TARGET6, OTHER6, FAR6 = "fd00:231::1", "fd00:231::2", "fd00:231::3", "fd00:231:1::2"
SERVER_ADDRESSES = (TARGET4, OTHER4, FAR4, TARGET6, OTHER6, FAR6)
TCP_PORT, OTHER_TCP_PORT = 8080, 8081
UDP_PORT, OTHER_UDP_PORT = 5353, 5354
BLACKHOLE_PORT = 9999   # the server drops SYNs to this port (see Topology.blackhole)


@dataclasses.dataclass
class Topology:
    lab: Lab
    client: Namespace
    server: Namespace
    client_peer: Peer
    server_peer: Peer
    tcp_listeners: dict

    @classmethod
    def build(cls, lab: Lab) -> "Topology":
        client, server = lab.namespace("cli"), lab.namespace("srv")
        lab.link(client, server, [f"{CLIENT4}/24", f"{CLIENT6}/64"],
                 [f"{TARGET4}/24", f"{OTHER4}/24", f"{FAR4}/24", f"{TARGET6}/64", f"{OTHER6}/64", f"{FAR6}/64"])
        client.add_route("10.231.1.0/24", via=TARGET4)
        client.add_route("fd00:231:1::/64", via=TARGET6)
        client.enable_conntrack()
        server_peer = server.peer()
        listeners = {port: server_peer.listen("tcp", "::", port) for port in (TCP_PORT, OTHER_TCP_PORT)}
        for address in SERVER_ADDRESSES:
            for port in (UDP_PORT, OTHER_UDP_PORT):
                server_peer.listen("udp", address, port)
        return cls(lab, client, server, client.peer(), server_peer, listeners)

    def blackhole(self, port: int = BLACKHOLE_PORT) -> None:
        """The server silently drops TCP SYNs to ``port`` (IPv4 and IPv6): connects stay SYN_SENT."""
        rule = ["-A", "INPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"]
        self.server.iptables(*rule)
        self.server.ip6tables(*rule)


@dataclasses.dataclass
class ReaperResult:
    argv: list
    returncode: int
    stdout: str
    stderr: str

    @property
    def doc(self) -> dict:
        """The `-o json` document on stdout."""
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as error:
            raise AssertionError(f"stdout of {self.describe()} is not JSON: {error}") from None

    def describe(self) -> str:
        return (f"`{' '.join(map(str, self.argv))}` -> exit {self.returncode}\n"
                f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}")


class Reaper:
    """Runs the conn-reaper binary inside a namespace."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def run(self, namespace: Namespace, *args: str, wrapper: Sequence[str] = (), binary: str | None = None,
            timeout: float = 60) -> ReaperResult:
        argv = [*wrapper, binary or self.binary, *args]
        try:
            result = namespace.run(argv, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"conn-reaper did not finish within {timeout}s: {argv}") from None
        return ReaperResult(namespace.argv(argv), result.returncode, result.stdout, result.stderr)

    def ok_json(self, namespace: Namespace, *args: str) -> dict:
        """Runs with `-o json`, asserts exit 0 and returns the document."""
        result = self.run(namespace, *args, "-o", "json")
        assert result.returncode == 0, result.describe()
        document = result.doc
        assert document["counts"]["errors"] == 0 and document["errors"] == [], result.describe()
        return document
