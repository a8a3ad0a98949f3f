"""The reconnect-storm budget across backends that die together.

Two backends (each the dead address of its own server namespace, see lab/faults.py) hold 800
connections each and go silent at the same instant; a third answers. The budget is a burst of 1,000
and 100 a second. Whatever the order of the passes, the agent never ends more than the bucket held
(1,000, plus what refills: 100 a second) in any window from the first reap on; both dead backends get
their first reap at once, the second when the first pass returns rather than a cadence later with
what the first left; and every one of the 1,600 is ended as the budget refills."""

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
