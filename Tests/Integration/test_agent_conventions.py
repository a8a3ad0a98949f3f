"""What an SRE expects of a node agent's logs, metrics and flags: a log level set by flag or file and
changed by a reload, the standard process_* metrics, build_info with version and revision, a backend
nobody probed yet reported as unknown (never as down), `--netns NAME` as `ip -n` takes it, and
`check -o json`."""

from __future__ import annotations

import json
import signal
import time

from lab.agent import Agent
from lab.netns import endpoint
from lab.topology import TARGET4, TCP_PORT

LISTEN = ("127.0.0.1", 9762)
PORT = 7462


def yaml(level: str, interval: str = "200ms", ports=(PORT,)) -> str:
    backends = ", ".join(f'"127.0.0.1:{port}"' for port in ports)
    return (f"listen: {LISTEN[0]}:{LISTEN[1]}\nlog_level: {level}\npools:\n  - name: local\n    backends: [{backends}]\n"
            f"    probe: {{type: tcp, interval: {interval}, timeout: 100ms}}\n")


def test_the_log_level_comes_from_the_file_and_a_reload_changes_it(lab, reaper_binary, tmp_path):
    namespace = lab.namespace("logs")
    config = tmp_path / "agent.yaml"
    config.write_text(yaml("warning"))       # the backend refuses: a probe failure every 200 ms, at debug
    agent = Agent(namespace, reaper_binary, ["--config", str(config)], listen=LISTEN)
    agent.wait_listening()
    time.sleep(1.0)
    assert not agent.find("probe failed"), "debug lines at log_level warning"
    assert not agent.find(level="info"), agent.log_text()
    config.write_text(yaml("debug"))
    reloaded = time.monotonic()
    agent.signal(signal.SIGHUP)
    failed = agent.wait_line(lambda line: line.msg == "probe failed", 5, since=reloaded)
    assert failed is not None, agent.log_text()
    assert failed.fields.get("failure") == "refused" and failed.fields.get("probe"), failed.text
    assert agent.stop() == 0


def test_the_log_level_flag_and_its_bad_values(lab, reaper_binary):
    namespace = lab.namespace("flags")
    bad = namespace.run([reaper_binary, "run", "--backend", f"127.0.0.1:{PORT}", "--log-level", "loud"], check=False)
    assert bad.returncode == 2, bad
    assert "--log-level" in bad.stderr and "'loud' is not one of trace, debug, info" in bad.stderr, bad.stderr
    agent = Agent(namespace, reaper_binary, ["--backend", f"127.0.0.1:{PORT}", "--log-level", "debug",
                                             "--listen", f"{LISTEN[0]}:{LISTEN[1]}", "--interval", "200ms",
                                             "--timeout", "100ms"], listen=LISTEN)
    assert agent.wait_line(lambda line: line.msg == "probe failed", 5) is not None, agent.log_text()
    assert agent.stop() == 0


def test_numeric_flags_out_of_range_are_named_and_nothing_starts(lab, reaper_binary):
    namespace = lab.namespace("ranges")
    for flag, value, range_text in (("--fall", "0", "1 to 100"), ("--rise", "101", "1 to 100"),
                                    ("--max-sockets-per-second", "0", "1 to 10000000")):
        bad = namespace.run([reaper_binary, "run", "--backend", f"127.0.0.1:{PORT}", flag, value], check=False)
        assert bad.returncode == 2, bad
        assert flag in bad.stderr and f"'{value}' is not a whole number from {range_text}" in bad.stderr, bad.stderr


def test_process_metrics_build_info_and_unknown_backends(lab, reaper_binary, tmp_path):
    namespace = lab.namespace("metrics")
    peer = namespace.peer()
    ports = [PORT + index for index in range(4)]
    for port in ports:
        peer.listen("tcp", "127.0.0.1", port)
    config = tmp_path / "agent.yaml"
    config.write_text(yaml("info", interval="60s", ports=ports))    # probes start at a random point of 60 s
    agent = Agent(namespace, reaper_binary, ["--config", str(config)], listen=LISTEN)
    agent.wait_listening()
    metrics = agent.metrics()
    states = {backend["address"]: backend["state"] for backend in agent.status()["pools"][0]["backends"]}
    unknown = [address for address, state in states.items() if state == "unknown"]
    assert unknown, f"every backend was probed within a second of a 60 s interval: {states}"
    for address, state in states.items():
        up = metrics.get("conn_reaper_backend_up", backend=address)
        assert (up is None) == (state == "unknown"), f"{address}: state {state}, backend_up {up}"
        assert metrics.value("conn_reaper_backend_state", backend=address, state=state) == 1
    build = metrics.matching("conn_reaper_build_info")
    assert len(build) == 1 and set(build[0][0]) == {"version", "revision"} and build[0][1] == 1, build
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds",
                 "process_open_fds", "process_max_fds"):
        assert metrics.has(name), f"{name} is missing"
    assert 10e6 < metrics.value("process_resident_memory_bytes") < 200e6
    assert abs(metrics.value("process_start_time_seconds") - time.time()) < 60
    assert 5 < metrics.value("process_open_fds") < metrics.value("process_max_fds")
    assert metrics.value("conn_reaper_config_last_reload_successful") == 1
    assert abs(metrics.value("conn_reaper_config_last_reload_success_timestamp_seconds") - time.time()) < 60
    assert agent.stop() == 0


def test_netns_takes_a_name_as_ip_n_does(topo, reaper):
    client = topo.client_peer
    target = client.connect_one(TARGET4, TCP_PORT)
    by_name = reaper.ok_json(topo.lab.namespace("ops"), "list", "--netns", topo.client.name, endpoint(TARGET4, TCP_PORT))
    assert [s["netns"] for s in by_name["sockets"]] == [f"/run/netns/{topo.client.name}"], by_name["sockets"]
    for bad in ("..", "a/b", ""):
        result = reaper.run(topo.client, "list", "--netns", bad, endpoint(TARGET4, TCP_PORT))
        assert result.returncode != 0 and "--netns" in result.stderr, result.describe()
    assert client.probe([target]) == ["ok"]


def test_check_speaks_json(topo, reaper):
    text = reaper.run(topo.client, "check")
    result = reaper.run(topo.client, "check", "-o", "json")
    document = json.loads(result.stdout)
    assert set(document) == {"can_work", "checks"}, document
    assert document["can_work"] is (result.returncode == 0) and result.returncode == text.returncode
    assert {c["result"] for c in document["checks"]} <= {"ok", "warning", "failed"}, document
    names = [c["name"] for c in document["checks"]]
    assert "SOCK_DESTROY allowed" in names and all(name in text.stdout for name in names), document
