"""Netlink trouble under a running agent, each caused for real from outside: the agent must say what
went wrong (a log line and conn_reaper_netlink_errors_total) and keep doing what it still can.

- ENOBUFS: another process floods the agent's sock_diag sockets with junk messages (root may send
  netlink unicasts to any port of its namespace), so their receive queues stay full while a dead
  backend's 3,000 connections are reaped: dump replies and destroy acks are dropped and the kernel
  reports ENOBUFS, exactly as when a small receive buffer overflows.
- A namespace vanishing mid-reap: of two named namespaces, one is deleted while the dead backend's
  connections are being reaped (paced by the budget): it is named in an error each pass, the other
  is reaped to the end, and the agent keeps running.
- EPERM mid-run: a process cannot take a capability from another one (capset(2) changes only the
  caller's own threads), so the honest way is the agent's own: started as root without `netns:`, it
  keeps CAP_NET_ADMIN alone; a reload that adds a pool in another namespace then gets EPERM from
  setns(2), while the pool in its own namespace is still reaped.
- conntrack absent: this kernel has nf_conntrack built in (no modules to unload), so the agent is
  started under a seccomp filter that answers socket(AF_NETLINK, NETLINK_NETFILTER) with
  EPROTONOSUPPORT, the kernel's own answer when nfnetlink is not there: sockets are still reaped,
  the conntrack part is reported as not done, with the reason.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import socket
import struct
import threading
import time

from lab.agent import Agent, pool_yaml
from lab.faults import PORT, DeadBackendLab
from lab.netns import delete_namespace, in_netns, wait_for
from lab.traffic import BulkPeer

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
    try:
        wait_for(lambda: topology.established() == 0, 20, "every connection to the dead backend ended")
    except AssertionError as error:
        # Seen once in a full CI run (never alone): keep what the agent said for the next look.
        raise AssertionError(f"{error}: {topology.established()} left\n{agent.log_text(80)}") from None
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
    # Every connection accounted for: a destroy whose ack was lost counts once its socket is gone.
    assert metrics.value("conn_reaper_sockets_destroyed_total", backend=topology.backend) == 3000, metrics.text
    check = topology.bulk_check()
    assert check[topology.backend] == {"alive": 0, "ended": {"ECONNABORTED": 3000}}, check
    assert check[topology.live_backend] == {"alive": 100, "ended": {}}, check
    assert topology.decoys_answer() == ["ok"] * len(topology.decoy_ids)
    assert agent.stop() == 0, agent.describe()


def two_client_namespaces(fault_lab):
    """Client namespace A (the agent's own) and B, both holding connections toward the one server."""
    topology = DeadBackendLab.build(fault_lab)
    other = fault_lab.namespace("clib")
    fault_lab.link(other, topology.server, ["10.241.2.1/24"], ["10.241.2.2/24"], a_dev="to-srv", b_dev="to-clib")
    other.add_route("10.241.1.0/24", via="10.241.2.2")
    other.enable_conntrack()
    return topology, other


def namespace_path(namespace) -> str:
    return f"/run/netns/{namespace.name}"


def test_a_namespace_vanishing_mid_reap_is_named_and_the_others_are_still_reaped(fault_lab, reaper_binary, tmp_path):
    topology, other = two_client_namespaces(fault_lab)
    other_bulk = BulkPeer(other, "bulk-client", 2)
    assert other_bulk.call("connect", dst=topology.dead, port=PORT, n=1500)["connected"] == 1500
    topology.connect(1500, 50)
    # B first: its connections are the ones being reaped when it goes.
    config = agent_config(tmp_path, topology, max_sockets_per_second=300, max_sockets_burst=300,
                          netns=[namespace_path(other), namespace_path(topology.client)])
    agent = Agent(topology.client, reaper_binary, ["--config", config], listen=LISTEN)
    agent.wait_ready()
    topology.silence()
    first = agent.wait_line(lambda l: l.msg == "reaped" and l.fields.get("netns") == namespace_path(other), 15)
    assert first is not None, agent.describe()
    gone_path = namespace_path(other)
    delete_namespace(other.name)
    vanished = time.monotonic()
    # Between `ip netns delete`'s unmount and its unlink the file is an empty mode-0 file: EACCES for
    # an agent without CAP_DAC_OVERRIDE, then ENOENT.
    named = agent.wait_line(lambda l: l.msg.startswith("namespace not reaped") and l.fields.get("netns") == gone_path
                            and l.fields.get("errno") == "ENOENT", 70, since=vanished)
    assert named is not None, agent.log_text()
    wait_for(lambda: topology.established() == 0, 30, "the other namespace's connections all ended")
    done = time.monotonic() - vanished
    metrics = agent.metrics()
    gone = metrics.value("conn_reaper_netlink_errors_total", operation="open", errno="ENOENT")
    print(f"\n{first.text}\n{named.text}\nthe agent's own namespace fully reaped {done:.1f} s after the other "
          f"vanished; netlink_errors_total{{operation=open,errno=ENOENT}} = {gone:.0f}")
    assert named.fields["errno"] == "ENOENT" and "namespace gone" in named.fields["error"], named.text
    assert gone >= 1
    assert topology.bulk_check()[topology.backend] == {"alive": 0, "ended": {"ECONNABORTED": 1500}}
    assert topology.decoys_answer() == ["ok"] * len(topology.decoy_ids)
    assert agent.get("/healthz")[0] == 200
    assert agent.stop() == 0, agent.describe()


def test_eperm_after_a_reload_that_needs_a_shed_capability_is_named_and_the_own_namespace_still_reaped(
        fault_lab, reaper_binary, tmp_path):
    topology, other = two_client_namespaces(fault_lab)
    topology.connect(200, 20)
    probe = {"type": "tcp", "interval": "200ms", "timeout": "150ms", "fall": 2, "rise": 1}
    own = {"name": "own", "backends": [topology.backend, topology.live_backend], "probe": probe}
    path = tmp_path / "agent.yaml"
    path.write_text(pool_yaml([own], listen=LISTEN))
    agent = Agent(topology.client, reaper_binary, ["--config", str(path)], listen=LISTEN)
    agent.wait_ready()
    assert agent.find("capabilities")[0].fields["sys_admin"] == "false"   # shed at start: not needed then
    path.write_text(pool_yaml([own, {**own, "name": "other", "netns": f"[{namespace_path(other)}]"}], listen=LISTEN))
    agent.signal(signal.SIGHUP)
    wait_for(lambda: agent.metrics().value("conn_reaper_config_reloads_total", result="success") == 1, 5, "the reload")
    topology.silence()
    # The namespace it cannot enter cannot be read either: missing evidence is no evidence of death,
    # so that pool makes no verdict (named, with the errno), while the own namespace's pool reaps.
    denied = agent.wait_line(lambda l: l.msg.startswith("namespace not read") and "not permitted" in l.fields.get("error", ""), 10)
    assert denied is not None, agent.log_text()
    wait_for(lambda: topology.established() == 0, 10, "the own namespace's connections ended")
    held = agent.metrics().value("conn_reaper_reaps_suppressed_total", pool="other", reason="evidence_missing")
    print(f"\n{denied.text}\nreaps_suppressed_total{{pool=other,reason=evidence_missing}} = {held:.0f}")
    assert held >= 1 and namespace_path(other) in denied.fields["error"], denied.text
    assert agent.backend_states()[f"other/{topology.backend}"] != "dead", agent.log_text()
    assert topology.bulk_check()[topology.backend] == {"alive": 0, "ended": {"ECONNABORTED": 200}}
    assert topology.decoys_answer() == ["ok"] * len(topology.decoy_ids)
    assert agent.stop() == 0, agent.describe()


# seccomp: socket(AF_NETLINK, *, NETLINK_NETFILTER) fails with EPROTONOSUPPORT, everything else is allowed.
_ARCH = {"x86_64": (0xC000003E, 41), "aarch64": (0xC00000B7, 198)}
AF_NETLINK, NETLINK_NETFILTER, EPROTONOSUPPORT = 16, 12, 93


def refuse_netfilter_netlink() -> None:
    """preexec_fn: installs the filter in the child; the agent (and its re-exec) inherit it."""
    arch, socket_nr = _ARCH[platform.machine()]

    def op(code, k, jt=0, jf=0):
        return struct.pack("=HBBI", code, jt, jf, k)

    load, jeq, ret = 0x20, 0x15, 0x06
    program = b"".join([
        op(load, 4), op(jeq, arch, 0, 7),
        op(load, 0), op(jeq, socket_nr, 0, 5),
        op(load, 16), op(jeq, AF_NETLINK, 0, 3),
        op(load, 32), op(jeq, NETLINK_NETFILTER, 0, 1),
        op(ret, 0x00050000 | EPROTONOSUPPORT), op(ret, 0x7FFF0000),
    ])
    buffer = ctypes.create_string_buffer(program)
    fprog = struct.pack("=HxxxxxxQ", len(program) // 8, ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) != 0:   # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")


def test_conntrack_absent_sockets_still_reaped_and_the_conntrack_part_reported(fault_lab, reaper_binary, tmp_path):
    topology = DeadBackendLab.build(fault_lab)
    topology.connect(200, 20)
    agent = Agent(topology.client, reaper_binary, ["--config", agent_config(tmp_path, topology)], listen=LISTEN,
                  preexec_fn=refuse_netfilter_netlink)
    agent.wait_ready()
    tracked = topology.tracked(state=None)
    topology.silence()
    reaped = agent.wait_line(lambda l: l.msg == "reaped" and l.fields.get("backend") == topology.backend, 10)
    assert reaped is not None, agent.log_text()
    reported = agent.wait_line(lambda l: l.msg.startswith("conntrack unavailable"), 5)
    assert reported is not None, agent.log_text()
    absent = agent.metrics().value("conn_reaper_netlink_errors_total", layer="conntrack", errno="EPROTONOSUPPORT")
    print(f"\n{reaped.text}\n{reported.text}\nnetlink_errors_total{{layer=conntrack,errno=EPROTONOSUPPORT}} = "
          f"{absent:.0f}; conntrack entries toward the backend before {tracked}, after {topology.tracked(state=None)} "
          f"({topology.tracked()} established)")
    assert reaped.fields["sockets"] == "200" and reaped.fields["conntrack"] == "0", reaped.text
    assert "conntrack netlink unavailable" in reported.fields["error"], reported.text
    assert absent >= 1
    # The conntrack part was not done, as reported: the entries are all still there (each socket's RST
    # moved its entry to CLOSE, which the kernel keeps 10 s; the agent deleted none).
    # (The agent's own probes add an entry or a few.)
    assert tracked >= 200 and topology.tracked(state=None) >= 200
    assert topology.bulk_check()[topology.backend] == {"alive": 0, "ended": {"ECONNABORTED": 200}}
    assert topology.decoys_answer() == ["ok"] * len(topology.decoy_ids)
    assert agent.stop() == 0, agent.describe()
