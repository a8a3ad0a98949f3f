"""The stuck-connection detector against the seed experiment of incident 3.

A client holds one connection to a backend, sends a heartbeat every 0.5 s and blocks reading the
echo; then `iptables -I OUTPUT -p tcp --sport <its port> -j DROP` in the client's namespace makes the
connection a silent blackhole while new connections still work (so probes pass). With the agent
(tcp probe, stuck_after 3s) the client is answered again, from a new port, within 4.5 s of the drop;
without it the client still hangs after 10 s. An idle connection and a busy, acknowledged one to the
same backend survive throughout."""

from __future__ import annotations

import json
import selectors
import subprocess
import textwrap
import time

import pytest

SERVER, CLIENT, PORT = "10.234.0.2", "10.234.0.1", 7000

ECHO_SERVER = textwrap.dedent("""
    import selectors, socket
    selector = selectors.DefaultSelector()
    listener = socket.socket(); listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", %d)); listener.listen(64); listener.setblocking(False)
    selector.register(listener, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                connection, _ = listener.accept(); connection.setblocking(False)
                selector.register(connection, selectors.EVENT_READ)
            else:
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(key.fileobj); key.fileobj.close()
                else:
                    try:
                        key.fileobj.send(data)
                    except OSError:
                        pass
""" % PORT)

# Prints one JSON line per event; reconnects at once when its connection fails, like kubelet would
# if only the kernel told it. Also keeps an idle connection and a busy one to the same backend.
HEARTBEAT_CLIENT = textwrap.dedent("""
    import errno, json, socket, sys, time
    def emit(**event):
        event["t"] = time.monotonic(); print(json.dumps(event), flush=True)
    def connect():
        s = socket.create_connection((%r, %d)); s.settimeout(0.5); return s
    idle = connect()
    busy = connect()
    heartbeat = connect()
    emit(event="connected", port=heartbeat.getsockname()[1], idle=idle.getsockname()[1], busy=busy.getsockname()[1])
    while True:
        try:
            busy.sendall(b"b" * 100); busy.recv(100)
        except OSError as error:
            emit(event="busy-failed", error=errno.errorcode.get(error.errno, str(error)))
        try:
            heartbeat.sendall(b"hb\\n")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if heartbeat.recv(16):
                        emit(event="echo", port=heartbeat.getsockname()[1]); break
                    raise ConnectionResetError(errno.ECONNRESET, "eof")
                except socket.timeout:
                    busy.sendall(b"b" * 100); busy.recv(100)
        except OSError as error:
            emit(event="failed", error=errno.errorcode.get(error.errno, str(error)))
            heartbeat.close()
            heartbeat = connect()
            emit(event="reconnected", port=heartbeat.getsockname()[1])
        time.sleep(0.5)
""" % (SERVER, PORT))


class Events:
    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.selector = selectors.DefaultSelector()
        self.selector.register(process.stdout, selectors.EVENT_READ)
        self.seen: list[dict] = []

    def until(self, predicate, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.seen:
                if predicate(event):
                    return event
            if self.selector.select(timeout=max(0.0, min(0.2, deadline - time.monotonic()))):
                line = self.process.stdout.readline()
                if not line:
                    return None
                self.seen.append(json.loads(line))
        return next((event for event in self.seen if predicate(event)), None)


@pytest.fixture
def setup(lab, tmp_path):
    client = lab.namespace("client")
    server = lab.namespace("server")
    lab.link(client, server, [f"{CLIENT}/24"], [f"{SERVER}/24"])
    client.enable_conntrack()
    (tmp_path / "server.py").write_text(ECHO_SERVER)
    (tmp_path / "client.py").write_text(HEARTBEAT_CLIENT)
    echo = server.popen(["python3", str(tmp_path / "server.py")], stdout=subprocess.PIPE, text=True)
    assert echo.stdout.readline().strip() == "ready"
    return client, tmp_path


def start_client(client, tmp_path) -> tuple[Events, dict]:
    process = client.popen(["python3", str(tmp_path / "client.py")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = Events(process)
    connected = events.until(lambda e: e["event"] == "connected", 5)
    assert connected, process.stderr.read() if process.poll() is not None else "client did not connect"
    assert events.until(lambda e: e["event"] == "echo", 5), "no heartbeat echo before the drop"
    return events, connected


def socket_alive(client, port: int) -> bool:
    out = client.run(["ss", "-Htn", "state", "established", "sport", f"= :{port}"]).stdout
    return f":{port}" in out


def test_stuck_connection_is_ended_and_the_client_recovers(setup, reaper_binary):
    client, tmp_path = setup
    config = {"listen": "127.0.0.1:9749", "pools": [{"name": "backend", "backends": [f"{SERVER}:{PORT}"], "stuck_after": "3s",
                                                     "probe": {"type": "tcp", "interval": "500ms", "timeout": "300ms"}}]}
    (tmp_path / "agent.yaml").write_text(json.dumps(config))
    agent = client.popen([reaper_binary, "run", "--config", str(tmp_path / "agent.yaml")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    events, connected = start_client(client, tmp_path)
    dropped_at = time.monotonic()
    client.iptables("-I", "OUTPUT", "-p", "tcp", "--sport", str(connected["port"]), "-j", "DROP")
    recovered = events.until(lambda e: e["event"] == "echo" and e["port"] != connected["port"] and e["t"] > dropped_at, 8)
    assert recovered, f"heartbeat never answered again: {events.seen[-5:]}"
    print(f"stuck: answered again {recovered['t'] - dropped_at:.2f} s after the drop")
    assert recovered["t"] - dropped_at <= 4.5, f"answered again {recovered['t'] - dropped_at:.2f} s after the drop"
    failure = next(e for e in events.seen if e["event"] == "failed" and e["t"] > dropped_at)
    assert failure["error"] == "ECONNABORTED", failure       # ended by SOCK_DESTROY, not by a timeout
    assert socket_alive(client, connected["idle"]), "the idle connection was ended"
    assert socket_alive(client, connected["busy"]), "the busy, acknowledged connection was ended"
    assert not any(e["event"] == "busy-failed" for e in events.seen), events.seen
    agent.terminate()
    _, log = agent.communicate(timeout=10)
    audit = [line for line in log.splitlines() if "stuck connection ended" in line]
    assert len(audit) == 1, log
    assert f"local={CLIENT}:{connected['port']}" in audit[0] and "backoff=" in audit[0] and "send_q=" in audit[0], audit[0]


def test_without_the_agent_the_client_still_hangs_after_10_seconds(setup):
    client, tmp_path = setup
    events, connected = start_client(client, tmp_path)
    dropped_at = time.monotonic()
    client.iptables("-I", "OUTPUT", "-p", "tcp", "--sport", str(connected["port"]), "-j", "DROP")
    answered = events.until(lambda e: e["event"] in ("echo", "failed") and e["t"] > dropped_at + 0.3, 10)
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
    failure = events.until(lambda e: e["event"] == "failed", 3)
    assert failure and failure["error"] == "ECONNABORTED", events.seen[-3:]
    assert socket_alive(client, connected["idle"]) and socket_alive(client, connected["busy"])
