"""A configuration file that goes bad under a running agent: replaced by a directory, made unreadable,
truncated mid-write, or made huge. Each time the reload is refused with the problem named, the
running configuration stays (its backends still watched), and memory stays bounded; a good file
afterwards is taken again."""

from __future__ import annotations

import os
import shutil
import signal
import time

from lab import privileges
from lab.agent import Agent
from lab.netns import wait_for

LISTEN = ("127.0.0.1", 9763)
PORTS = (7463, 7464)


def config_text(port: int) -> str:
    return (f"listen: {LISTEN[0]}:{LISTEN[1]}\npools:\n  - name: local\n    backends: [\"127.0.0.1:{port}\"]\n"
            "    probe: {type: tcp, interval: 200ms, timeout: 100ms}\n")


def reload_refused(agent: Agent, reason: str) -> None:
    signalled = time.monotonic()
    agent.signal(signal.SIGHUP)
    line = agent.wait_line(lambda l: l.msg == "configuration not reloaded: the running one stays", 5, since=signalled)
    assert line is not None, agent.log_text()
    assert reason in line.fields.get("error", ""), line.text
    assert agent.metrics().value("conn_reaper_config_last_reload_successful") == 0
    backends = [b["address"] for pool in agent.status()["pools"] for b in pool["backends"]]
    assert backends == [f"127.0.0.1:{PORTS[0]}"], f"the running configuration changed: {backends}"


def test_a_bad_file_leaves_the_running_configuration_and_names_the_problem(lab, reaper_binary):
    namespace = lab.namespace("cfg")
    peer = namespace.peer()
    for port in PORTS:
        peer.listen("tcp", "127.0.0.1", port)
    directory = privileges.world_readable_dir("conn-reaper-faults-")
    try:
        path = privileges.write_file(directory, "agent.yaml", config_text(PORTS[0]))
        # As the systemd unit runs it: a non-root user, so a file made unreadable is unreadable to it.
        agent = Agent(namespace, reaper_binary, ["--config", path], shape="systemd", listen=LISTEN)
        agent.wait_ready()
        rss_before = agent.metrics().value("process_resident_memory_bytes")

        os.chmod(path, 0)
        reload_refused(agent, "cannot be read (Permission denied)")
        os.chmod(path, 0o644)

        os.unlink(path)
        os.mkdir(path)
        reload_refused(agent, "is a directory, not a file")
        os.rmdir(path)

        text = config_text(PORTS[1])
        privileges.write_file(directory, "agent.yaml", text[: len(text) // 2 + 7])   # cut mid-line, as a writer dies
        reload_refused(agent, "agent.yaml")

        with open(path, "wb") as huge:
            huge.truncate(100 << 20)                        # 100 MB
        reload_refused(agent, "is 104857600 bytes, more than the 4194304 a configuration may have")
        rss_after = agent.metrics().value("process_resident_memory_bytes")
        print(f"\nRSS {rss_before / 1e6:.1f} MB before, {rss_after / 1e6:.1f} MB after a 100 MB file was refused")
        assert rss_after - rss_before < 20e6, (rss_before, rss_after)

        os.unlink(path)
        privileges.write_file(directory, "agent.yaml", config_text(PORTS[1]))
        agent.signal(signal.SIGHUP)
        wait_for(lambda: agent.metrics().value("conn_reaper_config_last_reload_successful") == 1, 5, "a good reload")
        assert [b["address"] for pool in agent.status()["pools"] for b in pool["backends"]] == [f"127.0.0.1:{PORTS[1]}"]
        assert agent.stop() == 0, agent.describe()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
