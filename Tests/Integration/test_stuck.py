"""The stuck-connection detector against the seed experiment of incident 3.

A client holds one connection to a backend, sends a heartbeat every 0.5 s and blocks reading the
echo; then `iptables -I OUTPUT -p tcp --sport <its port> -j DROP` in the client's namespace makes the
connection a silent blackhole while new connections still work (so probes pass). With the agent
(tcp probe, stuck_after 3s) the client is answered again, from a new port, within 5.5 s of the drop: its
next beat (up to 0.5 s after the drop) is queued, never sent, which one look cannot date; the scans (every
0.75 s) date it from the first that sees it waiting, and end it on the first that has seen it wait 3 s;
without it the client still hangs after 10 s. An idle connection and a busy, acknowledged one to the
same backend survive throughout."""

from __future__ import annotations

import json
import time

import pytest

from lab.agent import Agent
from lab.netns import wait_for
from lab.traffic import PeerProcess

SERVER, CLIENT, PORT = "10.234.0.2", "10.234.0.1", 7000


@pytest.fixture
def setup(lab, tmp_path):
    client = lab.namespace("client")
    server = lab.namespace("server")
    lab.link(client, server, [f"{CLIENT}/24"], [f"{SERVER}/24"])
    client.enable_conntrack()
    server.peer().listen("tcp", "0.0.0.0", PORT)       # an echo server
    return client, tmp_path


def start_client(client, tmp_path) -> tuple[PeerProcess, dict]:
    events = PeerProcess(client, "heartbeat", SERVER, PORT)
    connected = events.wait_event("connected", 5)
    assert connected, f"the client did not connect: {events.stderr()}"
    assert events.wait_event("echo", 5), "no heartbeat echo before the drop"
    return events, connected


def socket_alive(client, port: int) -> bool:
    out = client.run(["ss", "-Htn", "state", "established", "sport", f"= :{port}"]).stdout
    return f":{port}" in out


def test_stuck_connection_is_ended_and_the_client_recovers(setup, reaper_binary):
    client, tmp_path = setup
    config = {"listen": "127.0.0.1:9749", "pools": [{"name": "backend", "backends": [f"{SERVER}:{PORT}"], "stuck_after": "3s",
                                                     "probe": {"type": "tcp", "interval": "500ms", "timeout": "300ms"}}]}
    (tmp_path / "agent.yaml").write_text(json.dumps(config))
    agent = Agent(client, reaper_binary, ["--config", str(tmp_path / "agent.yaml")], listen=config["listen"])
    events, connected = start_client(client, tmp_path)
    dropped_at = time.monotonic()
    client.iptables("-I", "OUTPUT", "-p", "tcp", "--sport", str(connected["port"]), "-j", "DROP")
    recovered = events.wait_event(lambda e: e["event"] == "echo" and e["port"] != connected["port"] and e["t"] > dropped_at, 8)
    assert recovered, f"heartbeat never answered again: {events.events[-5:]}"
    print(f"stuck: answered again {recovered['t'] - dropped_at:.2f} s after the drop")
    assert recovered["t"] - dropped_at <= 5.5, f"answered again {recovered['t'] - dropped_at:.2f} s after the drop"
    failure = next(e for e in events.events if e["event"] == "failed" and e["t"] > dropped_at)
    assert failure["error"] == "ECONNABORTED", failure       # ended by SOCK_DESTROY, not by a timeout
    assert socket_alive(client, connected["idle"]), "the idle connection was ended"
    assert socket_alive(client, connected["busy"]), "the busy, acknowledged connection was ended"
    assert not any(e["event"] == "busy-failed" for e in events.events), events.events
    agent.stop()
    log = agent.log_text(None)
    audit = [line for line in log.splitlines() if "stuck connection ended" in line]
    assert len(audit) == 1, log
    assert f"local={CLIENT}:{connected['port']}" in audit[0] and "backoff=" in audit[0] and "send_q=" in audit[0], audit[0]


def test_without_the_agent_the_client_still_hangs_after_10_seconds(setup):
    client, tmp_path = setup
    events, connected = start_client(client, tmp_path)
    dropped_at = time.monotonic()
    client.iptables("-I", "OUTPUT", "-p", "tcp", "--sport", str(connected["port"]), "-j", "DROP")
    answered = events.wait_event(lambda e: e["event"] in ("echo", "failed") and e["t"] > dropped_at + 0.3, 10)
    assert answered is None, f"the blackholed client recovered on its own: {answered}"
    assert socket_alive(client, connected["port"])


def test_one_shot_list_and_purge_with_stuck(setup, reaper_binary):
    client, tmp_path = setup
    events, connected = start_client(client, tmp_path)
    before = json.loads(client.run([reaper_binary, "list", "--stuck", "2s", f"{SERVER}:{PORT}", "-o", "json"]).stdout)
    assert before["sockets"] == [], before      # healthy connections are never stuck
    client.iptables("-I", "OUTPUT", "-p", "tcp", "--sport", str(connected["port"]), "-j", "DROP")
    time.sleep(3.0)
    listed = json.loads(client.run([reaper_binary, "list", "--stuck", "2s", f"{SERVER}:{PORT}", "-o", "json"]).stdout)
    assert [s["local"] for s in listed["sockets"]] == [f"{CLIENT}:{connected['port']}"], listed
    info = listed["sockets"][0]["tcp_info"]
    assert info["last_ack_recv_ms"] >= 2000 and info["backoff"] > 0, info
    purged = json.loads(client.run([reaper_binary, "purge", "--stuck", "2s", f"{SERVER}:{PORT}", "-o", "json"]).stdout)
    assert purged["counts"]["sockets_destroyed"] == 1, purged
    assert [e["original"]["src"] for e in purged["conntrack"]] == [f"{CLIENT}:{connected['port']}"], purged
    failure = events.wait_event(lambda e: e["event"] == "failed", 3)
    assert failure and failure["error"] == "ECONNABORTED", events.events[-3:]
    assert socket_alive(client, connected["idle"]) and socket_alive(client, connected["busy"])


SINK = """
import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.bind(("0.0.0.0", 7001)); s.listen(1)
c, _ = s.accept()
time.sleep(600)   # never reads: the window shuts, and the kernel still answers every window probe
"""
FILLER = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], 7001))
c.setblocking(False)
sent = 0
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    try:
        sent += c.send(b"x" * 65536)
    except BlockingIOError:
        time.sleep(0.05)
print(sent, flush=True)
time.sleep(600)
"""


def test_a_shut_window_whose_peer_answers_its_probes_is_never_stuck_and_one_that_stops_answering_is(setup, reaper_binary):
    """The stuck rule's living side: a peer that stops reading shuts its window, and the sender's kernel
    probes it with backoff (0.2 s doubling toward 2 min), so the last ACK ages past stuck_after while
    the peer answers every probe. Never condemned. Once the peer stops answering (its ACKs dropped),
    the unanswered probes condemn it."""
    client, _ = setup
    server = next(ns for ns in client.lab.namespaces if ns.role == "server")
    server.popen(["python3", "-c", SINK])
    time.sleep(0.3)
    client.popen(["python3", "-c", FILLER, SERVER])
    target = f"{SERVER}:7001"

    def listed() -> list:
        out = client.run([reaper_binary, "list", "--stuck", "2s", target, "-o", "json"]).stdout
        return json.loads(out)["sockets"]

    def persist_timer() -> bool:
        return "persist" in client.run(["ss", "-Htno", "state", "established", "dst", target]).stdout

    wait_for(persist_timer, 8, "the sender probing a shut window")
    aged = []
    deadline = time.monotonic() + 14
    while time.monotonic() < deadline:
        assert listed() == [], "a shut window whose peer answers its probes was taken for stuck"
        aged.append(json.loads(client.run([reaper_binary, "list", target, "-o", "json"]).stdout)["sockets"][0]["tcp_info"]
                    ["last_ack_recv_ms"])
        time.sleep(0.5)
    assert max(aged) >= 2000, f"the last ACK never aged past stuck_after: {aged}"
    # The other way: the peer's ACKs are dropped; the window probes go unanswered.
    server.iptables("-I", "OUTPUT", "-p", "tcp", "--sport", "7001", "-j", "DROP")
    condemned = wait_for(listed, 20, "the unanswered shut window to be condemned", interval=0.5)
    assert condemned[0]["tcp_info"]["last_ack_recv_ms"] >= 2000, condemned
    print(f"\nshut window answered: oldest ACK {max(aged)} ms, never stuck; unanswered: condemned")


#: A client like a lease renewal: one short request every 6 s on a long-lived connection, each echo
#: awaited up to 60 s. Prints each write, echo and failure as JSON.
SPARSE = r"""
import errno, json, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
port = s.getsockname()[1]
def say(**event):
    print(json.dumps({"t": time.monotonic(), "port": port, **event}), flush=True)
say(event="connected")
s.settimeout(60)
while True:
    say(event="wrote")
    try:
        s.sendall(b"renew\n")
        while not s.recv(64).endswith(b"\n"):
            pass
    except OSError as failure:
        say(event="failed", error=errno.errorcode.get(failure.errno, str(failure.errno)))
        break
    say(event="echo")
    time.sleep(6)
"""


def sparse_writer(client, events_file):
    process = client.popen(["python3", "-c", SPARSE, SERVER, str(PORT)], stdout=events_file.open("w"))
    events = lambda: [json.loads(line) for line in events_file.read_text().splitlines() if line.strip()]
    wait_for(lambda: [e for e in events() if e["event"] == "echo"], 5, "the sparse writer's first echo")
    return process, events


def lose_the_next_write(setup, reaper_binary, lasting: float | None):
    """Starts the agent (stuck_after 2s) and a sparse writer, then drops what the writer sends on the
    server's side (beyond the client's host: the segment is in flight and retransmitted) from 0.1 s
    before its next write, for ``lasting`` seconds or for good. Returns the events and the write's time."""
    client, tmp_path = setup
    server = next(ns for ns in client.lab.namespaces if ns.role == "server")
    config = {"listen": "127.0.0.1:9749", "pools": [{"name": "backend", "backends": [f"{SERVER}:{PORT}"], "stuck_after": "2s",
                                                     "probe": {"type": "tcp", "interval": "500ms", "timeout": "300ms"}}]}
    (tmp_path / "agent.yaml").write_text(json.dumps(config))
    agent = Agent(client, reaper_binary, ["--config", str(tmp_path / "agent.yaml")], listen=config["listen"])
    _, events = sparse_writer(client, tmp_path / "sparse.jsonl")
    last_write = [e for e in events() if e["event"] == "wrote"][-1]
    time.sleep(max(0.0, last_write["t"] + 6.0 - 0.1 - time.monotonic()))
    rule = ["INPUT", "-p", "tcp", "--sport", str(last_write["port"]), "-j", "DROP"]
    server.iptables("-I", *rule)
    if lasting is not None:
        time.sleep(lasting)
        server.iptables("-D", *rule)
    return agent, events, last_write["port"], last_write["t"] + 6.0 - 0.5


def test_a_sparse_writer_that_loses_one_write_for_a_second_is_not_stuck(setup, reaper_binary):
    """A connection that writes every 6 s shows a 6 s old ACK the moment it writes. When that write is
    lost for 1 s (retransmitted at 0.2 and 0.6 s into the loss, answered at 1.4 s), its data has waited
    1.4 s, under stuck_after (2 s), though its last ACK is 7 s old and a timer fired: it is kept, and
    its echo comes on the same connection. (Condemned on the last ACK's age and one retransmission, it
    was ended 0.3-0.6 s into the loss.)"""
    agent, events, port, since = lose_the_next_write(setup, reaper_binary, 1.0)
    write = [e for e in events() if e["event"] == "wrote" and e["t"] > since][0]
    answer = wait_for(lambda: [e for e in events() if e["event"] in ("echo", "failed") and e["t"] > since], 5,
                      "the lost write's echo or failure")[0]
    time.sleep(1.0)     # two more scans
    log = agent.log_text(None)
    assert answer["event"] == "echo" and answer["port"] == port, f"{answer}\n{log}"
    assert "stuck connection ended" not in log, log
    assert not [e for e in events() if e["event"] == "failed"], events()[-3:]
    print(f"\nsparse writer's write lost 1 s: kept, echoed on its own connection {answer['t'] - write['t']:.2f} s after it")


def test_a_sparse_writer_whose_path_stays_broken_is_stuck_once_its_data_waited_stuck_after(setup, reaper_binary):
    """The other way: the write is lost for good. It is ended (ECONNABORTED) once its data has waited
    stuck_after (2 s), not before, whatever its last ACK's age says."""
    agent, events, port, since = lose_the_next_write(setup, reaper_binary, None)
    write = wait_for(lambda: [e for e in events() if e["event"] == "wrote" and e["t"] > since], 3, "the lost write")[0]
    failure = wait_for(lambda: [e for e in events() if e["event"] == "failed"], 8, "the stuck writer to be ended")[0]
    log = agent.log_text(None)
    waited = failure["t"] - write["t"]
    assert failure["error"] == "ECONNABORTED", f"{failure}\n{log}"
    assert 2.0 <= waited <= 3.5, f"ended {waited:.2f} s after the lost write\n{log}"
    print(f"\nsparse writer's write lost for good: ended {waited:.2f} s after it (stuck_after 2 s)")
