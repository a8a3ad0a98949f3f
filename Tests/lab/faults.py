"""The fault tests' topology: a client namespace holding thousands of connections toward a backend
that dies silently, with decoys that must survive, and what the kernel still holds afterwards.

    client ns (10.241.N.1, conntrack on)  <veth>  server ns: DEAD 10.241.N.2, LIVE 10.241.N.3
      bulk-client: COUNT connections to DEAD:PORT, LIVE_COUNT to LIVE:PORT   bulk-backends on PORT (both)
      sockets peer: decoys to LIVE:DECOY_PORT and DEAD:DECOY_PORT            echo servers on DECOY_PORT

``silence()`` makes DEAD:PORT swallow everything both ways (no FIN, no RST: a power loss as far as
TCP can tell), while DEAD:DECOY_PORT keeps answering: a pool names DEAD:PORT only, so the decoys on
the same address must never be touched. Addresses are 10.241.x.x and ports 19000-19999 only.
"""

from __future__ import annotations

import dataclasses

from lab.netns import Lab, Namespace, endpoint
from lab.traffic import BulkPeer, Peer

PORT, DECOY_PORT = 19080, 19081


@dataclasses.dataclass
class DeadBackendLab:
    client: Namespace
    server: Namespace
    dead: str
    live: str
    bulk: BulkPeer
    decoys: Peer
    decoy_ids: list[int]

    @staticmethod
    def build(lab: Lab, subnet: int = 1, client: Namespace | None = None, role: str = "cli") -> "DeadBackendLab":
        """A server namespace and (unless given) a client namespace joined by a veth pair."""
        client = client or lab.namespace(role)
        server = lab.namespace(f"srv{subnet}")
        base = f"10.241.{subnet}"
        lab.link(client, server, [f"{base}.1/24"], [f"{base}.2/24", f"{base}.3/24"],
                 a_dev=f"to-srv{subnet}", b_dev="to-cli")
        client.enable_conntrack()
        dead, live = f"{base}.2", f"{base}.3"
        BulkPeer(server, "bulk-backends", 0, f"{dead},{live}", PORT)
        echo = server.peer()
        echo.listen("tcp", dead, DECOY_PORT)
        echo.listen("tcp", live, DECOY_PORT)
        bulk = BulkPeer(client, "bulk-client", subnet)
        decoys = client.peer()
        return DeadBackendLab(client, server, dead, live, bulk, decoys, [])

    @property
    def backend(self) -> str:
        return endpoint(self.dead, PORT)

    @property
    def live_backend(self) -> str:
        return endpoint(self.live, PORT)

    def connect(self, count: int, live_count: int = 0, decoys: int = 4) -> None:
        for address, n in ((self.dead, count), (self.live, live_count)):
            if n:
                answer = self.bulk.call("connect", dst=address, port=PORT, n=n)
                assert answer["connected"] == n, f"{n} connections to {address}:{PORT} asked, {answer}"
        self.decoy_ids = (self.decoys.connect(self.dead, DECOY_PORT, count=decoys)
                          + self.decoys.connect(self.live, DECOY_PORT, count=decoys))

    def silence(self) -> None:
        """DEAD:PORT answers nothing from now on, in either direction."""
        self.server.iptables("-I", "INPUT", "-d", self.dead, "-p", "tcp", "--dport", str(PORT), "-j", "DROP")
        self.server.iptables("-I", "OUTPUT", "-s", self.dead, "-p", "tcp", "--sport", str(PORT), "-j", "DROP")

    def established(self, address: str | None = None, port: int = PORT) -> int:
        """Established sockets in the client namespace toward ADDRESS:PORT (default: the dead backend)."""
        target = endpoint(address or self.dead, port)
        return len(self.client.run(["ss", "-Htn", "state", "established", "dst", target]).stdout.splitlines())

    def tracked(self, address: str | None = None, port: int = PORT, state: str | None = "ESTABLISHED") -> int:
        """Conntrack entries (ESTABLISHED ones, or in any ``state=None``) in the client namespace whose
        original destination is ADDRESS:PORT. A destroyed socket's RST moves its entry to CLOSE."""
        result = self.client.run(["conntrack", "-L", "-p", "tcp", "-d", address or self.dead, "--dport", str(port),
                                  *(["--state", state] if state else [])], check=False)
        return len([line for line in result.stdout.splitlines() if "src=" in line])

    def decoys_answer(self) -> list[str]:
        return self.decoys.probe(self.decoy_ids)

    def bulk_check(self) -> dict:
        """Per destination: connections still healthy, and how the ended ones ended."""
        return self.bulk.call("check")["keys"]
