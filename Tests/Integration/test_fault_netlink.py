"""Netlink trouble under a running agent, each caused for real from outside: the agent must say what
went wrong (a log line and conn_reaper_netlink_errors_total) and keep doing what it still can.

- ENOBUFS: another process floods the agent's sock_diag sockets with junk messages (root may send
  netlink unicasts to any port of its namespace), so their receive queues stay full while a dead
  backend's 3,000 connections are reaped: dump replies and destroy acks are dropped and the kernel
  reports ENOBUFS, exactly as when a small receive buffer overflows.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time

from lab.agent import Agent, pool_yaml
from lab.faults import DeadBackendLab
from lab.netns import in_netns, wait_for

LISTEN = ("127.0.0.1", 19748)
NETLINK_SOCK_DIAG = 4


def agent_config(tmp_path, topology: DeadBackendLab, **top) -> str:
    path = tmp_path / "agent.yaml"
    path.write_text(pool_yaml(
        [{"name": "bulk", "backends": [topology.backend, topology.live_backend],
          "probe": {"type": "tcp", "interval": "200ms", "timeout": "150ms", "fall": 2, "rise": 1}}],
        listen=LISTEN, **top))
    return str(path)


def netlink_ports(namespace, pid: int, protocol: int) -> list[int]:
    """The port ids of the process's netlink sockets of one protocol (/proc/net/netlink of its namespace)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = []
    for line in namespace.run(["cat", "/proc/net/netlink"]).stdout.splitlines()[1:]:
        fields = line.split()
        if int(fields[1]) == protocol and fields[-1] in inodes:
            ports.append(int(fields[2]))
    return ports


class Flood:
    """Keeps the agent's sock_diag receive queues full with junk (32 KiB messages of a type nobody
    asked for, sequence 0) until stopped; counts the messages the kernel queued and the ones it
    refused because the queue was full (each refusal marks the receiver overrun: ENOBUFS)."""

    def __init__(self, namespace, pid: int) -> None:
        self.namespace, self.pid = namespace, pid
        self.stop = threading.Event()
        self.queued = self.refused = 0
        self.thread = threading.Thread(target=lambda: in_netns(namespace.name, self._run), daemon=True)
        self.thread.start()

    def _run(self) -> None:
        sender = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        sender.bind((0, 0))
        junk = struct.pack("=LHHLL", 16 + 32768, 0x7777, 0, 0, 0) + bytes(32768)
        ports, looked = [], 0.0
        while not self.stop.is_set():
            if time.monotonic() - looked > 0.2:   # sockets come and go (a worker's purger opens its own)
                ports, looked = netlink_ports(self.namespace, self.pid, NETLINK_SOCK_DIAG), time.monotonic()
            for port in ports:
                try:
                    sender.sendto(junk, socket.MSG_DONTWAIT, (port, 0))
                    self.queued += 1
                except BlockingIOError:
                    self.refused += 1
                except OSError:
                    pass   # a socket closed meanwhile
        sender.close()

    def end(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def test_enobufs_on_dumps_and_acks_is_ridden_out_and_counted(fault_lab, reaper_binary, tmp_path):
    topology = DeadBackendLab.build(fault_lab)
    topology.connect(3000, 100)
    agent = Agent(topology.client, reaper_binary, ["--config", agent_config(tmp_path, topology)], listen=LISTEN)
    agent.wait_ready()
    wait_for(lambda: netlink_ports(topology.client, agent.pid, NETLINK_SOCK_DIAG), 5, "the agent's sock_diag sockets")
    flood = Flood(topology.client, agent.pid)
    try:
        time.sleep(0.5)
        topology.silence()
        cut = time.monotonic()
        dead = agent.wait_line(lambda l: l.msg == "backend dead", 10)
        assert dead is not None, agent.describe()
        time.sleep(2.0)
    finally:
        flood.end()
    wait_for(lambda: topology.established() == 0, 20, "every connection to the dead backend ended")
    done = time.monotonic() - cut
    reaped = agent.wait_line(lambda l: l.msg == "reaped" and l.fields.get("backend") == topology.backend, 20)
    assert reaped is not None, agent.describe()
    metrics = agent.metrics()
    errors = {(labels["operation"], labels["errno"]): value
              for labels, value in metrics.matching("conn_reaper_netlink_errors_total")}
    warnings = [line.text for line in agent.log() if "ENOBUFS" in line.text and line.fields.get("level") == "warning"]
    print(f"\nflood: {flood.queued} junk messages queued, {flood.refused} refused (queue full); all 3,000 "
          f"ended {done:.1f} s after the cut; {reaped.text}; netlink_errors_total: {errors}\n" + "\n".join(warnings))
    assert flood.refused > 0, "the flood never filled a queue"
    assert any(errno == "ENOBUFS" and value > 0 for (_, errno), value in errors.items()), (errors, agent.log_text())
    assert warnings, agent.log_text()
    check = topology.bulk_check()
    assert check[topology.backend] == {"alive": 0, "ended": {"ECONNABORTED": 3000}}, check
    assert check[topology.live_backend] == {"alive": 100, "ended": {}}, check
    assert topology.decoys_answer() == ["ok"] * len(topology.decoy_ids)
    assert agent.stop() == 0, agent.describe()
