"""The soak: ``conn-reaper run`` for N minutes under everything at once, then judged.

    CONN_REAPER=.build/release/conn-reaper PYTHONPATH=Tests python3 Tests/Soak/soak.py --minutes 30

(``make soak``, ``SOAK_MINUTES=N``; a 3-minute run is Tests/Integration/test_soak.py.) Needs root.

The lab (namespaces ``crsoak-<pid>-*``, addresses 10.242.0.0/16 and fd00:242::/32, port 20000):
the agent's namespace ``agt`` and a server namespace ``srv`` holding the 100 backend addresses on
one dual-stack listener (the lab's sockets peer). Pool ``flap``: 80 IPv4 and 10 IPv6 backends in the
agent's own namespace; pool ``roam``: 10 IPv4 backends with ``netns: all``. Conntrack tracks ``agt``.
Meanwhile (Tests/Soak/load.py): backends go down and up at random, a churn client in ``agt`` makes
``rate`` connections a second toward all 100 and holds each until it ends, namespaces appear and
vanish, and a SIGHUP comes every second with good and bad configurations. Every 10 s the agent's
process is sampled (Tests/Soak/measure.py).

At the end every backend is brought back, and the run passes when:
- fds (the agent's own namespace's), threads (outside namespace workers) and RSS are flat over the
  second half (measure.TOLERANCES), and no worker thread outlives its namespace by STALE_LIMIT_S;
- every reap is accounted for: the audit lines' ``sockets=`` sum to conn_reaper_sockets_destroyed_total,
  their ``conntrack=`` to conn_reaper_conntrack_entries_deleted_total, and the clients saw exactly as
  many ECONNABORTED, backend by backend;
- every reload answered as it should (log line, gauge, /status), the counters agree, the agent ran
  throughout and stopped cleanly.
Exit status 1 when any criterion fails; the report (Markdown) names each.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))        # Tests/, for `lab` and `Soak`

from lab.agent import Agent, pool_yaml                              # noqa: E402
from lab.netns import Lab, cleanup_namespaces, endpoint, reap_stale_namespaces, wait_for  # noqa: E402
from lab.traffic import ChurnPeer                                   # noqa: E402
from Soak.load import NOT_RELOADED, RELOADED, Flapper, NamespaceChurn, Reloader  # noqa: E402
from Soak.measure import STALE_LIMIT_S, Sampler, sample_table, trend_table, trends  # noqa: E402

STEM = "crsoak"
PORT = 20000
LISTEN = ("127.0.0.1", 20999)
FLAP = [f"10.242.1.{i}" for i in range(1, 81)] + [f"fd00:242:1::{i:x}" for i in range(1, 11)]
ROAM = [f"10.242.3.{i}" for i in range(1, 11)]
SAMPLE_EVERY = 10.0
AUDITED = ("reaped", "stuck connection ended", "rebalanced connection ended")


def configurations() -> list[tuple[str, str, bool]]:
    """Two good configurations that differ (probe interval of ``flap``, membership of ``roam``) and a
    bad one (fall -1), each padded to one size so a rewrite keeps the file's stamp."""
    def text(interval: str, roam: list[str], fall: int = 2) -> str:
        probe = {"type": "tcp", "interval": interval, "timeout": "250ms", "rise": 2, "fall": fall}
        return pool_yaml([
            {"name": "flap", "backends": [endpoint(b, PORT) for b in FLAP], "probe": probe},
            {"name": "roam", "backends": [endpoint(b, PORT) for b in roam], "netns": "all",
             "probe": {**probe, "interval": "500ms", "fall": 2}},
        ], listen=LISTEN, log_level="notice")
    texts = [("A", text("500ms", ROAM), True), ("bad", text("500ms", ROAM, fall=-1), False),
             ("B", text("400ms", ROAM[:-1]), True), ("bad", text("500ms", ROAM, fall=-1), False)]
    size = max(len(t.encode()) for _, t, _ in texts) + 16
    return [(name, t.rstrip("\n") + " " * (size - len(t.encode())) + "\n", good) for name, t, good in texts]


ROAM_BY_CONFIG = {"A": len(ROAM), "B": len(ROAM) - 1}


class LogWatch:
    """Reads the agent's log once, as it comes: audit sums and reload answers."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.read = 0
        self.lock = threading.Lock()
        self.audit_sockets: dict[str, int] = {}
        self.audit_conntrack: dict[str, int] = {}
        self.audit_lines = 0
        self.netns_reaps = 0
        self.reloads: list = []
        self.messages: dict[str, int] = {}

    def poll(self) -> None:
        with self.lock:
            lines = self.agent.tail(self.read)
            self.read += len(lines)
            for line in lines:
                self.messages[line.msg] = self.messages.get(line.msg, 0) + 1
                if line.msg in (RELOADED, NOT_RELOADED):
                    self.reloads.append(line)
                    del self.reloads[:-50]
                if line.msg not in AUDITED or line.fields.get("dry_run") == "true":
                    continue
                backend = line.fields.get("backend", "?")
                sockets = int(line.fields.get("sockets", "1" if line.msg != "reaped" else "0"))
                self.audit_sockets[backend] = self.audit_sockets.get(backend, 0) + sockets
                self.audit_conntrack[backend] = self.audit_conntrack.get(backend, 0) + int(line.fields.get("conntrack", "0"))
                self.audit_lines += 1
                if "netns" in line.fields and sockets:
                    self.netns_reaps += 1

    def wait_reload(self, since: float, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.poll()
            with self.lock:
                found = next((l for l in self.reloads if l.t >= since and l.fields.get("trigger") == "SIGHUP"), None)
            if found:
                return found
            self.agent.check_running()
            time.sleep(0.02)
        return None


@dataclasses.dataclass
class SoakResult:
    failures: list[str]
    report: str
    figures: dict


def build(lab: Lab):
    agent_ns, server_ns = lab.namespace("agt"), lab.namespace("srv")
    lab.link(agent_ns, server_ns, ["10.242.0.1/24", "fd00:242::1/64"], ["10.242.0.2/24", "fd00:242::2/64"])
    for backend in FLAP + ROAM:
        server_ns.add_address("lo", f"{backend}/128" if ":" in backend else f"{backend}/32")
    agent_ns.add_route("10.242.1.0/24", via="10.242.0.2")
    agent_ns.add_route("10.242.3.0/24", via="10.242.0.2")
    agent_ns.add_route("fd00:242:1::/64", via="fd00:242::2")
    agent_ns.enable_conntrack()
    server = server_ns.peer()
    server.listen("tcp", "::", PORT)
    return agent_ns, server_ns


def states_problem(agent: Agent, config: str) -> str | None:
    pools = {pool["name"]: len(pool["backends"]) for pool in agent.status()["pools"]}
    expected = {"flap": len(FLAP), "roam": ROAM_BY_CONFIG[config]}
    return None if pools == expected else f"/status shows pools {pools}, the last good configuration ({config}) has {expected}"


def every_backend_up(agent: Agent) -> bool:
    states = agent.backend_states()
    return len(states) == len(FLAP) + len(ROAM) and all(state == "up" for state in states.values())


def run_soak(binary: str, minutes: float, *, rate: float = 20.0, takedowns: float = 1.5, namespace_every: float = 3.0,
             seed: int | None = None, out=print) -> SoakResult:
    duration = minutes * 60
    prefix = f"{STEM}-{os.getpid()}-"
    reap_stale_namespaces(STEM)
    stop = threading.Event()
    threads: list = []
    lab = Lab(prefix=prefix)
    directory = tempfile.mkdtemp(prefix="conn-reaper-soak-")
    agent = churn = None
    try:
        agent_ns, server_ns = build(lab)
        configs = configurations()
        path = os.path.join(directory, "agent.yaml")
        with open(path, "w") as handle:
            handle.write(configs[0][1])
        agent = Agent(agent_ns, binary, ["--config", path], listen=LISTEN)
        agent.wait_ready(timeout=30)
        wait_for(lambda: every_backend_up(agent), 30, "every backend up")
        log = LogWatch(agent)
        started = time.monotonic()
        sampler = Sampler(agent.pid, started)
        churn = ChurnPeer(agent_ns)
        churn.start(FLAP + ROAM, PORT, rate, seed)
        flapper = Flapper(server_ns, FLAP + ROAM, takedowns, stop, seed)
        namespaces = NamespaceChurn(lab, server_ns, flapper, ROAM, PORT, agent, "roam", namespace_every, stop, seed)
        reloader = Reloader(agent, log, path, configs, lambda name: states_problem(agent, name), stop)
        threads = [flapper, namespaces, reloader]
        for thread in threads:
            thread.start()
        out(f"soak: {minutes:g} min, {len(FLAP) + len(ROAM)} backends, {rate:g} connects/s, "
            f"{takedowns:g} takedowns/s, a namespace every {namespace_every:g} s, agent pid {agent.pid}")
        next_sample = started
        while time.monotonic() - started < duration:
            if time.monotonic() >= next_sample:
                sample = sampler.sample(held=churn.tally()["held"])
                out(f"  t={sample.t:6.0f}s fds={sample.fds} (own {sample.core_fds}) rss={sample.rss_mib} MiB "
                    f"threads={sample.threads} (workers {sample.ns_threads}, stale {sample.stale_threads}) "
                    f"namespaces={sample.namespaces} held={sample.held} cpu={sample.cpu_s}s")
                next_sample += SAMPLE_EVERY
            agent.check_running()
            for thread in threads:
                if thread.error:
                    raise RuntimeError(f"{thread.name} failed: {thread.error!r}") from thread.error
            log.poll()
            time.sleep(0.5)
        sampler.sample(held=churn.tally()["held"])
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        return finish(agent, churn, log, sampler, flapper, namespaces, reloader, configs, path, duration, out)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        if churn is not None:
            churn.stop()
        if agent is not None:
            agent.close()
        try:
            lab.close()
        finally:
            cleanup_namespaces(prefix)
            for name in os.listdir(directory):
                os.unlink(os.path.join(directory, name))
            os.rmdir(directory)


def finish(agent, churn, log, sampler, flapper, namespaces, reloader, configs, path, duration, out) -> SoakResult:
    failures: list[str] = []
    # End on A before the last holders are let go: each waits until the agent shows its backend up,
    # and under B (the reloader may have stopped on it) the last roam backend is not shown at all.
    reloader.reload(*configs[0])
    namespaces.remove_all()
    flapper.restore_all()
    wait_for(lambda: every_backend_up(agent), 30, "every backend up again")
    time.sleep(2.0)                            # a reap pass in flight when the last one came up has ended
    final = churn.finish(settle=20)
    metrics = agent.metrics()
    exit_status = agent.stop()
    log.poll()

    # Growth
    found = trends(sampler.samples)
    failures += [f"{t.series} grows: {t.growth:+.2f} across the second half ({t.per_hour:+.1f}/h), allowed {t.allowed:.2f}"
                 for t in found if not t.ok]
    if sampler.stale_longest > STALE_LIMIT_S:
        failures.append(f"a worker thread stayed in a vanished namespace for {sampler.stale_longest:.0f} s")

    # Reaps: audit lines, metrics, what the clients saw
    audit = sum(log.audit_sockets.values())
    destroyed = metrics.value("conn_reaper_sockets_destroyed_total")
    audit_ct = sum(log.audit_conntrack.values())
    deleted = metrics.value("conn_reaper_conntrack_entries_deleted_total")
    seen: dict[str, int] = {}
    endings: dict[str, int] = {}
    for target, counts in final["targets"].items():
        for how, count in counts["ended"].items():
            endings[how] = endings.get(how, 0) + count
            if how in ("ECONNABORTED", "connect:ECONNABORTED"):
                key = endpoint(target, PORT)
                seen[key] = seen.get(key, 0) + count
    held_endings: dict[str, int] = {}
    for target, counts in namespaces.outcomes.items():
        for how, count in counts.items():
            held_endings[how] = held_endings.get(how, 0) + count
            if how in ("ECONNABORTED", "connect:ECONNABORTED"):
                key = endpoint(target, PORT)
                seen[key] = seen.get(key, 0) + count
    aborted = sum(seen.values())
    if audit != destroyed:
        failures.append(f"audit lines say {audit} sockets ended, conn_reaper_sockets_destroyed_total {destroyed:g}")
    if audit_ct != deleted:
        failures.append(f"audit lines say {audit_ct} conntrack entries deleted, the counter {deleted:g}")
    if aborted != audit:
        failures.append(f"clients saw {aborted} ECONNABORTED, the audit lines {audit} sockets ended")
    differing = sorted(b for b in set(seen) | set(log.audit_sockets) if seen.get(b, 0) != log.audit_sockets.get(b, 0))
    if differing:
        failures.append("per backend, clients vs audit: " + ", ".join(
            f"{b} {seen.get(b, 0)} vs {log.audit_sockets.get(b, 0)}" for b in differing[:10]))
    if audit == 0:
        failures.append("nothing was reaped: the soak did not exercise the agent")
    odd = {how: n for how, n in {**endings, **held_endings}.items()
           if how not in ("ECONNABORTED", "connect:ECONNABORTED", "connect:ECONNREFUSED", "ok")
           and not how.startswith("finish:")}
    if odd:
        failures.append(f"connections ended otherwise than reaped or refused: {odd}")
    failures += [f"a holder waited 30 s for its backend to be up and seen up: {line}" for line in namespaces.unsettled[:5]]

    # Reloads
    failures += [f"reload: {p}" for p in reloader.problems[:10]]
    good = metrics.value("conn_reaper_config_reloads_total", result="success")
    bad = metrics.value("conn_reaper_config_reloads_total", result="failure")
    if (good, bad) != (reloader.sent["good"], reloader.sent["bad"]):
        failures.append(f"reload counters {good:g} good / {bad:g} failed, sent {reloader.sent}")
    if exit_status != 0:
        failures.append(f"the agent exited with {exit_status} on SIGTERM")

    figures = {
        "samples": len(sampler.samples), "duration_s": duration, "audit_sockets": audit, "destroyed_metric": destroyed,
        "audit_conntrack": audit_ct, "conntrack_metric": deleted, "client_aborted": aborted,
        "audit_lines": log.audit_lines, "netns_reap_lines": log.netns_reaps, "endings": endings,
        "holder_endings": held_endings, "namespaces_made": namespaces.made, "switches": flapper.switches,
        "reloads_sent": reloader.sent, "destroy_errors": metrics.value("conn_reaper_destroy_errors_total"),
        "suppressed": {l.get("reason"): v for l, v in metrics.matching("conn_reaper_reaps_suppressed_total")},
        "final_live": {how: sum(c.get(how, 0) for c in final["final"].values())
                       for how in {h for c in final["final"].values() for h in c}},
        "stale_longest_s": round(sampler.stale_longest, 1), "messages": log.messages,
        "core_threads_first": sampler.core_names[0], "core_threads_last": sampler.core_names[-1],
    }
    report = render(sampler, found, figures, failures)
    out(report)
    return SoakResult(failures, report, figures)


def render(sampler, found, figures, failures) -> str:
    every = max(1, len(sampler.samples) // 40)
    lines = [f"### Soak: {figures['duration_s'] / 60:g} minutes, {figures['samples']} samples every {SAMPLE_EVERY:g} s",
             "", sample_table(sampler.samples, every), "", trend_table(found), "",
             "| reap accounting | count |", "|---|---|",
             f"| sockets ended, audit lines (`msg=reaped ... sockets=N`) | {figures['audit_sockets']} |",
             f"| conn_reaper_sockets_destroyed_total | {figures['destroyed_metric']:g} |",
             f"| ECONNABORTED seen by the clients | {figures['client_aborted']} |",
             f"| conntrack entries deleted, audit lines / counter | {figures['audit_conntrack']} / {figures['conntrack_metric']:g} |",
             f"| audit lines (of which in other namespaces, with sockets) | {figures['audit_lines']} ({figures['netns_reap_lines']}) |",
             f"| destroy errors | {figures['destroy_errors']:g} |", "",
             f"client endings: {figures['endings']}; holders in vanishing namespaces: {figures['holder_endings']}; "
             f"at the end: {figures['final_live']}",
             f"namespaces made: {figures['namespaces_made']}; backend switches: {figures['switches']}; "
             f"reloads sent: {figures['reloads_sent']}; suppressed reaps: {figures['suppressed']}; "
             f"longest a worker outlived its namespace: {figures['stale_longest_s']} s",
             f"threads outside namespace workers, by name: first sample {figures['core_threads_first']}, "
             f"last {figures['core_threads_last']}", "",
             "verdict: " + ("PASS" if not failures else "FAIL\n- " + "\n- ".join(failures))]
    return "\n".join(lines)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 30)))
    parser.add_argument("--rate", type=float, default=20.0, help="connections made a second")
    parser.add_argument("--takedowns", type=float, default=1.5, help="backends taken down a second")
    parser.add_argument("--namespace-every", type=float, default=3.0, help="seconds between new namespaces")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--report", help="also write the Markdown report here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: needs root (network namespaces, iptables)", file=sys.stderr)
        return 2
    binary = os.path.abspath(os.environ.get("CONN_REAPER", ".build/release/conn-reaper"))
    if not os.access(binary, os.X_OK):
        print(f"soak: no conn-reaper binary at {binary} (set CONN_REAPER)", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_interrupt)
    result = run_soak(binary, args.minutes, rate=args.rate, takedowns=args.takedowns,
                      namespace_every=args.namespace_every, seed=args.seed, out=lambda text: print(text, flush=True))
    if args.report:
        Path(args.report).write_text(result.report + "\n")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
