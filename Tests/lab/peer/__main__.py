"""The traffic peer: ``python3 -m lab.peer ROLE [ARGS]``, inside a test's network namespace.

One program for every kind of traffic the tests and benchmarks make; each role speaks the JSON-lines
protocol of ``protocol.py`` (lab.traffic drives them from the test process):

- ``sockets``: a few sockets with identities: echo servers, clients to probe (sockets.py).
- ``bulk-server`` / ``bulk-client`` / ``bulk-backends``: tens of thousands of idle connections, epoll (bulk.py).
- ``upstream NAME``: an apiserver-like upstream streaming lines over TCP and HTTP (upstream.py).
- ``streams SPECS``: long-lived client streams that reconnect and record every line (streams.py).
- ``talker``: a backend that writes its name to every connection (talker.py), and ``vip-client``:
  reconnecting TCP streams and a UDP query loop toward virtual IPs, reporting events (vip_client.py).
- ``http-load``: a thousand concurrent HTTP clients and slowloris ones against one endpoint (http_load.py).
- ``heartbeat``: one connection that sends a beat and waits for its echo, plus an idle and a busy one
  (heartbeat.py).
- ``churn``: a steady stream of connections toward many targets, each held until it ends, every end
  counted by how (churn.py, for the soak).
"""

from __future__ import annotations

import importlib
import sys

ROLES = {
    "sockets": "sockets",
    "bulk-server": "bulk",
    "bulk-client": "bulk",
    "bulk-backends": "bulk",
    "upstream": "upstream",
    "streams": "streams",
    "talker": "talker",
    "vip-client": "vip_client",
    "heartbeat": "heartbeat",
    "http-load": "http_load",
    "churn": "churn",
}


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ROLES:
        sys.stderr.write(f"usage: python3 -m lab.peer {{{'|'.join(ROLES)}}} [ARGS]\n")
        return 2
    module = importlib.import_module(f"lab.peer.{ROLES[argv[1]]}")
    return module.main(argv[1], argv[2:]) or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
