"""The reconnect-storm budget across backends that die together.

Two backends (each the dead address of its own server namespace, see lab/faults.py) hold 800
connections each and go silent at the same instant; a third answers. The budget is a burst of 1,000
and 100 a second. Whatever the order of the passes, the agent never ends more than the bucket held
(1,000, plus what refills: 100 a second) in any window from the first reap on; both dead backends get
their first reap at once, the second when the first pass returns rather than a cadence later with
what the first left; and every one of the 1,600 is ended as the budget refills.

Forwarded flows are charged too: a dead backend's conntrack entries with no socket on this host (a
router's, a NodePort's: their clients reconnect as well) that its pass deletes count against the
budget. 400 of them, at a burst of 100 and 50 a second, leave a debt that the next death's pass waits
out (about 6 s, and no longer: it is tried again when a token is back); without them, the same death
is reaped at once."""

from __future__ import annotations

import time

from lab.agent import Agent, pool_yaml
from lab.faults import PORT, DeadBackendLab
from lab.netns import wait_for

LISTEN = ("127.0.0.1", 19748)
EACH, BURST, RATE = 800, 1000, 100
PROBE = {"type": "tcp", "interval": "200ms", "timeout": "150ms", "rise": 2, "fall": 2}


def test_two_backends_dying_together_share_one_burst_and_are_reaped_as_it_refills(fault_lab, reaper_binary, tmp_path):
    first = DeadBackendLab.build(fault_lab, subnet=1)
    second = DeadBackendLab.build(fault_lab, subnet=2, client=first.client)
    first.connect(EACH, decoys=0)
    second.connect(EACH, decoys=0)
    config = tmp_path / "agent.yaml"
    config.write_text(pool_yaml([{"name": "api", "backends": [first.backend, second.backend, first.live_backend],
                                  "probe": PROBE}], listen=LISTEN, max_sockets_burst=BURST, max_sockets_per_second=RATE))
    agent = Agent(first.client, reaper_binary, ["--config", str(config)], listen=LISTEN)
    agent.wait_ready()
    agent.wait_states({f"api/{b}": "up" for b in (first.backend, second.backend, first.live_backend)})

    cut = time.monotonic()
    first.silence()
    second.silence()
    wait_for(lambda: first.established() + second.established() == 0, 30, "every connection of both ended")
    done = time.monotonic() - cut
    time.sleep(0.5)
    reaps = [(line.t, int(line.fields["sockets"]), line.fields["backend"], line.fields["reason"])
             for line in agent.reaps(since=cut) if int(line.fields["sockets"]) > 0]
    info = "\n".join(f"{t - cut:7.3f} s {n:4d} {backend} {reason}" for t, n, backend, reason in reaps) + "\n" + agent.log_text(20)
    total = sum(n for _, n, _, _ in reaps)
    assert total == 2 * EACH, info
    # The cap over every window from the first reap on (lines are written when a pass returns, so a
    # pass that started in a window may land just after it: one pass's share of slack, none of burst).
    start = reaps[0][0]
    for index, (t, _, _, _) in enumerate(reaps):
        ended = sum(n for _, n, _, _ in reaps[: index + 1])
        allowed = BURST + RATE * (t - start) + RATE * 0.2
        assert ended <= allowed, f"{ended} ended by {t - start:.3f} s after the first reap, more than {allowed:.0f}\n{info}"
    first_reaps = {backend: t for t, _, backend, reason in reversed(reaps) if reason == "dead"}
    assert set(first_reaps) == {first.backend, second.backend}, info
    verdicts = {line.fields["backend"]: line.t for line in reversed(agent.find("backend dead", since=cut))}
    # Each first pass runs at its verdict, or the moment the pass that held the bucket came back:
    # not a cadence later with what the other left.
    earlier, later = sorted(first_reaps, key=first_reaps.get)
    waited = first_reaps[later] - max(verdicts[later], first_reaps[earlier])
    assert waited < 0.1, f"the second death's first pass came {waited:.3f} s after it could run\n{info}"
    in_first_second = sum(n for t, n, _, _ in reaps if t - start <= 1.0)
    apart = first_reaps[later] - first_reaps[earlier]
    print(f"\ntwo backends x {EACH} dying together, burst {BURST}, {RATE}/s: first reaps {apart * 1000:.0f} ms apart "
          f"({waited * 1000:.0f} ms after they could run), "
          f"{in_first_second} ended in the first second, all {total} by {done:.1f} s")
    # What the budget paces: the 600 left at 100 a second, within a few passes' slack.
    assert done <= 2 * EACH / RATE - BURST / RATE + 4.0, info
    agent.stop()


FORWARDED, LOCAL, SMALL_BURST, SMALL_RATE = 400, 40, 100, 50


def forwarded_flows(namespace, backend_address: str, count: int) -> None:
    """Established entries toward the backend from clients behind this host: no local socket owns them."""
    script = "\n".join(f"conntrack -I -p tcp -s 172.30.{i // 200}.{i % 200 + 1} -d {backend_address} --sport {30000 + i} "
                       f"--dport {PORT} --state ESTABLISHED -t 600 2>/dev/null" for i in range(count))
    namespace.run(["bash", "-c", script + "\ntrue"], timeout=60)


def charged_run(fault_lab, reaper_binary, tmp_path, forwarded: int) -> tuple[float, float, float, object]:
    """A (forwarded flows only) dies and is reaped; then C (LOCAL connections of this host) dies.
    Returns when A's pass ran, when C was found dead, when C's last connection was ended, and the agent."""
    first = DeadBackendLab.build(fault_lab, subnet=1)
    second = DeadBackendLab.build(fault_lab, subnet=2, client=first.client)
    second.connect(LOCAL, decoys=0)
    if forwarded:
        forwarded_flows(first.client, first.dead, forwarded)
        assert first.tracked() == forwarded
    config = tmp_path / "agent.yaml"
    config.write_text(pool_yaml([{"name": "api", "backends": [first.backend, second.backend, first.live_backend],
                                  "probe": PROBE}], listen=LISTEN, max_sockets_burst=SMALL_BURST,
                                max_sockets_per_second=SMALL_RATE))
    agent = Agent(first.client, reaper_binary, ["--config", str(config)], listen=LISTEN)
    agent.wait_ready()
    agent.wait_states({f"api/{b}": "up" for b in (first.backend, second.backend, first.live_backend)})
    first.silence()
    a_pass = agent.wait_line(lambda l: l.msg == "reaped" and l.fields.get("backend") == first.backend, 5)
    assert a_pass, agent.log_text(30)
    assert first.tracked() == 0, agent.log_text(30)
    cut = time.monotonic()
    second.silence()
    c_dead = agent.wait_line(lambda l: l.msg == "backend dead" and l.fields.get("backend") == second.backend, 5, since=cut)
    assert c_dead, agent.log_text(30)
    wait_for(lambda: second.established() == 0, 15, f"C's {LOCAL} connections ended")
    c_done = time.monotonic()
    return a_pass.t, c_dead.t, c_done, agent


def test_a_dead_backends_forwarded_flows_are_charged_and_the_next_death_waits_out_the_debt(fault_lab, reaper_binary,
                                                                                         tmp_path):
    a_pass, c_dead, c_done, agent = charged_run(fault_lab, reaper_binary, tmp_path, FORWARDED)
    info = agent.log_text(40)
    a_line = agent.find("reaped")[0]
    deleted = int(a_line.fields["conntrack"])
    # The forwarded flows, and the entries of the agent's own probes toward A (SYN_SENT: the flows a
    # probe leaves are charged like any other no socket here owns).
    assert int(a_line.fields["sockets"]) == 0 and FORWARDED <= deleted <= FORWARDED + 10, info
    debt = deleted - SMALL_BURST
    waited = c_done - c_dead
    # The debt (about 300) refills at 50 a second: C's connections wait about 6 s from A's pass, not a
    # moment, and not a cadence of announced flows (5 s) more.
    paid = debt / SMALL_RATE
    assert paid - 1.0 <= c_done - a_pass <= paid + 2.0, f"C's ended {c_done - a_pass:.2f}s after A's pass, debt {debt}\n{info}"
    assert [l for l in agent.log() if l.t >= c_dead - 0.01 and l.msg.startswith("reap suppressed")
            and l.fields.get("reason") == "budget" and l.fields.get("backend") == agent.find("backend dead")[-1].fields["backend"]], info
    agent.stop()
    print(f"\n{FORWARDED} forwarded flows of A deleted and charged (burst {SMALL_BURST}, {SMALL_RATE}/s): "
          f"C's {LOCAL} connections ended {c_done - a_pass:.2f}s after A's pass ({waited:.2f}s after C was dead)")


def test_without_forwarded_flows_the_next_death_is_reaped_at_once(fault_lab, reaper_binary, tmp_path):
    a_pass, c_dead, c_done, agent = charged_run(fault_lab, reaper_binary, tmp_path, 0)
    info = agent.log_text(40)
    assert c_done - c_dead < 1.0, f"C's ended {c_done - c_dead:.2f}s after C was dead\n{info}"
    agent.stop()
    print(f"\nno forwarded flows: C's {LOCAL} connections ended {c_done - c_dead:.2f}s after C was dead")
