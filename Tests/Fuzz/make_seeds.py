#!/usr/bin/env python3
"""Writes the seed corpora in Tests/Fuzz/corpus/<target>/ from real cases: the kernel's own replies
(sock_diag with tcp_info, ctnetlink, rtnetlink, NLMSG_ERROR) captured in a throwaway network
namespace, and the configurations and values the unit tests and deploy files use. Run as root
(`unshare --net`, `conntrack -I`); the seeds are committed, so this runs only to refresh them.

Usage: make_seeds.py   (from the repository root)"""

import hashlib
import os
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "Tests/Fuzz/corpus"
NLMSG_ERROR, NLMSG_DONE = 2, 3
REQUEST, MULTI, ACK, DUMP = 0x1, 0x2, 0x4, 0x300


def write(target: str, data: bytes) -> None:
    directory = CORPUS / target
    directory.mkdir(parents=True, exist_ok=True)
    (directory / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def exchange(protocol: int, message_type: int, flags: int, payload: bytes) -> list[bytes]:
    """The datagrams the kernel answers one request with, up to NLMSG_DONE, an error or a lone reply."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol) as sock:
        sock.bind((0, 0))
        sock.send(struct.pack("=IHHII", 16 + len(payload), message_type, flags, 1, 0) + payload)
        datagrams = []
        while True:
            datagram = sock.recv(1 << 20)
            datagrams.append(datagram)
            for kind, message_flags, _ in messages(datagram):
                if kind in (NLMSG_ERROR, NLMSG_DONE) or not message_flags & MULTI:
                    return datagrams


def messages(datagram: bytes):
    offset = 0
    while offset + 16 <= len(datagram):
        length, kind, flags = struct.unpack_from("=IHH", datagram, offset)
        yield kind, flags, datagram[offset:offset + length]
        offset += (length + 3) & ~3


def attribute(kind: int, value: bytes, nested: bool = False) -> bytes:
    return struct.pack("=HH", 4 + len(value), kind | (0x8000 if nested else 0)) + value + b"\0" * (-len(value) % 4)


def kernel_seeds() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # Established TCP sockets on both families, so the dump carries tcp_info as this kernel sizes it.
    keep = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.bind((host, 0))
        listener.listen()
        client = socket.create_connection(listener.getsockname()[:2])
        keep += [listener, client, listener.accept()[0]]
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.connect((host, 53))
        keep.append(udp)
    for family in (socket.AF_INET, socket.AF_INET6):
        for protocol in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
            request = struct.pack("=BBBBI", family, protocol, 2, 0, 0xFFFFFFFF) + b"\0" * 48  # INET_DIAG_INFO
            datagrams = exchange(4, 20, REQUEST | DUMP, request)  # NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY
            write("datagram", datagrams[0])
            for kind, _, message in messages(datagrams[0]):
                if kind == 20:
                    write("sockdiag", message[16:])
                    info = next((value for t, value in attributes(message[16 + 72:]) if t == 2), None)
                    if info:  # tcp_info cut to glibc's 104 bytes and to one byte short of it
                        for size in (104, 103):
                            write("sockdiag", message[16:16 + 72] + attribute(2, info[:size]))
    # NLMSG_ERROR: a destroy of a socket that does not exist (ENOENT) and a request the kernel refuses.
    nowhere = struct.pack("=BBBBI", 2, 6, 0, 0, 0xFFFFFFFF) + struct.pack(">HH", 1, 1) + bytes([127, 0, 0, 1]) + b"\0" * 44
    for datagram in exchange(4, 21, REQUEST | ACK, nowhere) + exchange(4, 20, REQUEST, b"\x63" * 4):
        write("datagram", datagram)
    for socket_ in keep:
        socket_.close()
    route_seeds()
    conntrack_seeds()


def attributes(data: bytes):
    offset = 0
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield kind & 0x3FFF, data[offset + 4:offset + length]
        offset += (length + 3) & ~3


def route_seeds() -> None:
    """The route target reads a selector byte (0 link, 1 route, 2 neighbour), then the payload."""
    subprocess.run(["ip", "link", "add", "fz0", "type", "veth", "peer", "name", "fz1"], check=True)
    subprocess.run(["ip", "addr", "add", "10.77.0.1/24", "dev", "fz0"], check=True)
    subprocess.run(["ip", "link", "set", "fz0", "up"], check=True)
    subprocess.run(["ip", "neigh", "add", "10.77.0.2", "lladdr", "02:00:00:00:00:02", "dev", "fz0"], check=True)
    subprocess.run(["ip", "route", "add", "10.78.0.0/16", "via", "10.77.0.2"], check=True)
    queries = [
        (0, 18, REQUEST | DUMP, struct.pack("=BBHiII", 0, 0, 0, 0, 0, 0)),  # RTM_GETLINK
        (2, 30, REQUEST | DUMP, struct.pack("=BBHiHBB", 2, 0, 0, 0, 0, 0, 0)),  # RTM_GETNEIGH
    ]
    for selector, kind, flags, payload in queries:
        for datagram in exchange(0, kind, flags, payload):
            write("datagram", datagram)
            for message_kind, _, message in messages(datagram):
                if message_kind in (16, 28):
                    write("route", bytes([selector]) + message[16:])
    for destination in ("10.78.1.1", "10.77.0.2", "127.0.0.1"):
        rtmsg = struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 0, 0, 0, 0, 0) + attribute(1, socket.inet_aton(destination))
        for datagram in exchange(0, 26, REQUEST, rtmsg):  # RTM_GETROUTE
            write("datagram", datagram)
            for message_kind, _, message in messages(datagram):
                if message_kind == 24:
                    write("route", bytes([1]) + message[16:])


def conntrack_seeds() -> None:
    entries = [
        ["-p", "tcp", "-s", "10.0.0.1", "-d", "10.96.0.1", "--sport", "40000", "--dport", "443", "-r", "10.0.0.5", "-q",
         "10.0.0.1", "--reply-port-src", "6443", "--reply-port-dst", "40000", "--state", "ESTABLISHED", "-w", "7", "-m", "3"],
        ["-p", "udp", "-s", "10.0.0.1", "-d", "10.0.0.5", "--sport", "5353", "--dport", "53"],
        ["-p", "tcp", "-s", "fd00::1", "-d", "fd00::5", "--sport", "40000", "--dport", "6443", "--state", "SYN_SENT"],
    ]
    for entry in entries:
        subprocess.run(["conntrack", "-I", *entry, "-t", "120", "-u", "ASSURED"], check=True, capture_output=True)
    for family in (socket.AF_INET, socket.AF_INET6):
        for datagram in exchange(12, 0x101, REQUEST | DUMP, struct.pack("=BBH", family, 0, 0)):  # IPCTNL_MSG_CT_GET
            write("datagram", datagram)
            for kind, _, message in messages(datagram):
                if kind == 0x100:
                    write("conntrack", message[16:])


def swift_strings(path: Path) -> list[str]:
    """The multi-line string literals of a Swift test file, indentation removed as Swift does."""
    found = []
    for match in re.finditer(r'"""\n(.*?)\n([ ]*)"""', path.read_text(), re.S):
        indent = len(match.group(2))
        found.append("\n".join(line[indent:] for line in match.group(1).split("\n")) + "\n")
    return found


def config_seeds() -> None:
    agent_tests = ROOT / "Tests/AgentTests"
    for text in swift_strings(agent_tests / "ConfigurationTests.swift"):
        write("yaml", text.encode())
    for text in re.findall(r'"(pools:(?:[^"\\]|\\.)*)"', (agent_tests / "ConfigurationTests.swift").read_text()):
        write("yaml", text.replace("\\n", "\n").replace('\\"', '"').encode())
    for path in [ROOT / "Deploy/systemd/config.yaml", ROOT / "Deploy/kubernetes/podmonitor/config.yaml"]:
        write("yaml", path.read_bytes())
    # The harness refuses absolute paths (an include could glob the machine's files): modules by prefix.
    nginx = [text.replace("load_module /usr/lib/nginx/", "load_module ") for text in swift_strings(agent_tests / "NginxConfigTests.swift")]
    # The main file includes conf.d/*.conf: the harness reads the second part as conf.d/a.conf.
    write("nginx", "\n#---\n".join(nginx).encode())
    for text in nginx:
        write("nginx", text.encode())
    kubespray = (ROOT / "Tests/Integration/kubespray/nginx.conf.j2").read_text()
    kubespray = re.sub(r"\{#.*?#\}", "", kubespray, flags=re.S)
    kubespray = re.sub(r"\{%.*?%\}\n?", "", kubespray)
    kubespray = kubespray.replace("{{ hostvars[host]['main_access_ip'] | ipwrap }}", "10.0.0.1")
    kubespray = re.sub(r"\{\{.*?\}\}", "6443", kubespray)
    write("nginx", kubespray.encode())
    for value in ["10.0.0.1:6443", "[fd00::3]:6443", "10.0.0.0/8", ":443", "fd00::/64", "[::ffff:10.0.0.1]:80", "500ms", "1.5s",
                  "2m", "0", "20%", "tcp,udp", "/run/netns/a,/proc/1/ns/net", "1e308", "-1s", " 1h"]:
        write("values", value.encode())


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--in-namespace":
        kernel_seeds()
        return 0
    config_seeds()
    # A fresh network namespace that ends with the process: nothing is left behind.
    subprocess.run(["unshare", "--net", sys.executable, __file__, "--in-namespace"], check=True)
    for directory in sorted(CORPUS.iterdir()):
        print(f"{directory.name}: {len(list(directory.iterdir()))} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
