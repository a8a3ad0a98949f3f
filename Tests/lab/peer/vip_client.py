"""The ``vip-client VIP DECOY_VIP STREAMS DECOYS TCP_PORT UDP_PORT`` role of the traffic peer: clients of
virtual IPs, like a client library behind kube-proxy.

Each TCP stream reconnects to its VIP on any error; the UDP client sends a query every 50 ms on one
connected socket and opens a new one only when the socket reports an error (a destroyed socket:
ECONNABORTED). Events: ``data`` (the first line from each backend per stream, ``name``), ``error``
(``err``), ``socket`` (a new UDP socket, ``local``); each with ``kind`` (vip, decoy, udp) and ``i``.
"""

from __future__ import annotations

import socket
import threading
import time

from lab.peer.protocol import errno_name, event, greet, serve_lines


def reason(error: OSError) -> str:
    return errno_name(error.errno) if error.errno else str(error)


def stream(kind: str, index: int, host: str, port: int) -> None:
    seen = set()
    while True:
        try:
            connection = socket.create_connection((host, port), timeout=0.5)
            connection.settimeout(None)
            buffer = b""
            while True:
                chunk = connection.recv(4096)
                if not chunk:
                    raise OSError(0, "eof")
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line not in seen:
                        seen.add(line)
                        event("data", kind=kind, i=index, name=line.decode())
        except OSError as error:
            event("error", kind=kind, i=index, err=reason(error))
            time.sleep(0.01)


def datagrams(vip: str, port: int) -> None:
    seen = set()

    def fresh() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((vip, port))
        s.settimeout(0.05)
        return s

    udp = fresh()
    event("socket", kind="udp", i=0, local=udp.getsockname()[1])
    while True:
        try:
            udp.send(b"q")
            answer = udp.recv(512)
            if answer not in seen:
                seen.add(answer)
                event("data", kind="udp", i=0, name=answer.decode())
            time.sleep(0.05)
        except socket.timeout:
            continue
        except OSError as error:
            event("error", kind="udp", i=0, err=reason(error))
            udp.close()
            udp = fresh()
            event("socket", kind="udp", i=0, local=udp.getsockname()[1])


def main(role: str, args: list[str]) -> int:
    vip, decoy_vip, streams, decoys, tcp_port, udp_port = args[0], args[1], *(int(a) for a in args[2:6])
    greet(role)
    for index in range(streams):
        threading.Thread(target=stream, args=("vip", index, vip, tcp_port), daemon=True).start()
    for index in range(decoys):
        threading.Thread(target=stream, args=("decoy", index, decoy_vip, tcp_port), daemon=True).start()
    threading.Thread(target=datagrams, args=(vip, udp_port), daemon=True).start()
    serve_lines()  # only quit: the events are the output
    return 0
