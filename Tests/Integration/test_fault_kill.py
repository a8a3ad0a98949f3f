"""The agent killed with SIGKILL in the middle of a reap, and started again.

A dead backend holds 3,000 connections and the reconnect-storm budget lets 300 go a second, so its
reap takes about ten seconds of passes. The agent is killed (SIGKILL: no cleanup of any kind) the
moment its first audit line appears, and started again: it knows nothing of the first run (every
backend starts `unknown`), finds the backend dead by its own probes, and reaps what is left. Then
nothing toward the dead backend may stay established (socket or conntrack entry), every connection
the first run did not end must be ended by the second, and nothing else may be touched: the live
backend's bulk connections and the decoys on the dead address's other port keep answering.
"""

from __future__ import annotations

import signal
import time

from lab.agent import Agent, pool_yaml
from lab.faults import DeadBackendLab
from lab.netns import wait_for

LISTEN = ("127.0.0.1", 19747)
CONNECTIONS, LIVE_CONNECTIONS, RATE = 3000, 200, 300


def audited(agent: Agent, backend: str) -> int:
    return sum(int(line.fields["sockets"]) for line in agent.reaps(backend))


def test_a_reap_killed_midway_is_finished_by_the_next_run_and_nothing_else_is_touched(fault_lab, reaper_binary, tmp_path):
    topology = DeadBackendLab.build(fault_lab)
    topology.connect(CONNECTIONS, LIVE_CONNECTIONS)
    config = tmp_path / "agent.yaml"
    config.write_text(pool_yaml(
        [{"name": "bulk", "backends": [topology.backend, topology.live_backend],
          "probe": {"type": "tcp", "interval": "200ms", "timeout": "150ms", "fall": 2, "rise": 1}}],
        listen=LISTEN, max_sockets_per_second=RATE, max_sockets_burst=RATE))
    first = Agent(topology.client, reaper_binary, ["--config", str(config)], listen=LISTEN)
    first.wait_ready()

    topology.silence()
    line = first.wait_line(lambda l: l.msg == "reaped" and l.fields.get("backend") == topology.backend, 15)
    assert line is not None, first.describe()
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(timeout=5)
    killed_after = time.monotonic() - line.t
    ended_by_first = audited(first, topology.backend)
    left = topology.established()
    print(f"\nkilled {killed_after * 1000:.0f} ms after the first audit line; the first run's lines say "
          f"{ended_by_first} ended; {left} of {CONNECTIONS} still established, "
          f"{topology.tracked()} conntrack entries toward the dead backend")
    # The entries of the sockets the budget left stay with them (their RST must still be reverse-NATed).
    assert topology.tracked() >= left, (topology.tracked(), left)
    # Mid-reap for real: some ended, most not.
    assert 0 < CONNECTIONS - left < CONNECTIONS / 2, (left, first.log_text())
    # A SIGKILL between a pass's destroys and its audit line loses at most that pass's line.
    assert ended_by_first <= CONNECTIONS - left <= ended_by_first + RATE, (ended_by_first, left)

    restarted = time.monotonic()
    second = Agent(topology.client, reaper_binary, ["--config", str(config)], listen=LISTEN)
    second.wait_ready()
    try:
        wait_for(lambda: topology.established() == 0, 30, "no established socket toward the dead backend")
    except AssertionError as error:
        suppressed = [l for l in second.metrics().text.splitlines() if "suppressed" in l or "destroyed" in l or "reap_duration_seconds_count" in l]
        raise AssertionError(f"{error}: {topology.established()} left\n{second.log_text()}\n{suppressed}") from None
    finished = time.monotonic() - restarted
    time.sleep(1.5)   # one more full pass (once a second while dead), then nothing may be left or touched
    assert topology.established() == 0
    assert topology.tracked() == 0, topology.client.run(["conntrack", "-L", "-d", topology.dead]).stdout[:2000]
    ended_by_second = audited(second, topology.backend)
    metrics = second.metrics()
    destroyed = metrics.value("conn_reaper_sockets_destroyed_total", backend=topology.backend)
    print(f"restarted agent: all {left} left ended {finished:.1f} s after its start; its audit lines say "
          f"{ended_by_second}, its metric {destroyed:.0f}")
    assert ended_by_second == left == destroyed, (ended_by_second, left, destroyed, second.log_text())

    # Nothing that should not be: the clients of the dead backend saw each connection aborted, the
    # live backend's connections and the decoys on both addresses are untouched.
    check = topology.bulk_check()
    dead, live = check[topology.backend], check[topology.live_backend]
    assert dead["alive"] == 0 and dead["ended"] == {"ECONNABORTED": CONNECTIONS}, dead
    assert live == {"alive": LIVE_CONNECTIONS, "ended": {}}, live
    assert topology.decoys_answer() == ["ok"] * len(topology.decoy_ids)
    assert topology.established(topology.live) == LIVE_CONNECTIONS
    assert second.reaps(topology.live_backend) == [] and first.reaps(topology.live_backend) == []
    assert second.stop() == 0, second.describe()
