"""The ``talker ADDR NAME TALK_PORT CLOSE_PORT UDP_PORT`` role of the traffic peer: a backend that says
who it is. On TALK_PORT it writes ``NAME`` every 100 ms to every connection, on CLOSE_PORT it accepts
and closes at once (a health port for tcp probes), on UDP_PORT it answers every datagram with NAME.
"""

from __future__ import annotations

import socket
import threading
import time

from lab.peer.protocol import greet, serve_lines


def talk(connection: socket.socket, name: bytes) -> None:
    try:
        while True:
            connection.sendall(name + b"\n")
            time.sleep(0.1)
    except OSError:
        pass


def serve_tcp(address: str, port: int, name: bytes, talking: bool) -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((address, port))
    server.listen(256)

    def accept() -> None:
        while True:
            connection, _ = server.accept()
            if talking:
                threading.Thread(target=talk, args=(connection, name), daemon=True).start()
            else:
                connection.close()

    threading.Thread(target=accept, daemon=True).start()


def serve_udp(address: str, port: int, name: bytes) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, port))

    def answer() -> None:
        while True:
            _, sender = udp.recvfrom(512)
            udp.sendto(name, sender)

    threading.Thread(target=answer, daemon=True).start()


def main(role: str, args: list[str]) -> int:
    address, name = args[0], args[1].encode()
    talk_port, close_port, udp_port = (int(a) for a in args[2:5])
    serve_tcp(address, talk_port, name, True)
    serve_tcp(address, close_port, name, False)
    serve_udp(address, udp_port, name)
    greet(role)
    serve_lines()  # only quit: the events are the output
    return 0
