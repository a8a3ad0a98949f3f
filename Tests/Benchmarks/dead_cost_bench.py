#!/usr/bin/env python3
"""Cost of keeping a dead backend reaped on a busy node: `conn-reaper run` watching a pool of 3 backends
while N other established connections (and their conntrack entries) sit on the node, first with every
backend up, then with one backend dead (its traffic silently dropped).

Goals (from the issue): with 50,000 other established sockets and one backend dead for minutes, the
agent averages under 2% of a core, while a new connect() toward the dead backend is ended within 200 ms
during its first minute down (after that, within 1 s).

Measured per socket count (--sizes, default 10000,50000,100000), with a fresh agent each time:
  all up     agent CPU (utime+stime from /proc/PID/stat, share of one core) over --rounds windows of
             --window seconds, nothing to reap: the baseline.
  one dead   the backend's packets are dropped in the server namespace (iptables DROP: probes time out,
             a SYN gets no answer, nothing is reset), the agent logs it down ("backend down", or "backend
             dead") and reaps it. Then, during the first minute down, agent CPU over the same windows while
             a prober in the client namespace keeps doing non-blocking connect()s to the dead backend
             (spaced 0.3-0.7 s at random) and times each until it fails with ECONNABORTED (the agent
             destroyed the SYN_SENT socket); a connect not ended within --abort-timeout counts as missed.
  later      (--long) the same after the first minute (from 61 s after the agent declared it down).

Lab: client namespace crdead-<pid>-cli (10.232.0.1, conntrack on through an iptables ctstate rule; the
agent, the holders of the N connections and the prober run here) and server namespace crdead-<pid>-srv
with its own TCP established hash (lab/bench.py). The N connections go to 10.232.0.2/.3 ports 7400/7401;
the pool is 10.232.0.11-13:7443 (tcp probe, interval 1s, timeout 500ms, rise 2, fall 2; 100 held
connections to each backend, so the first reap has work and the live backends' connections are checked
to be left alone); the dead backend is 10.232.0.13. The agent listens on 127.0.0.1:9847 inside the
client namespace. Everything is removed at the end, also on failure or Ctrl-C; a run killed with SIGKILL
is cleaned up by the next one.

Progress goes to stderr; a Markdown table and PASS/MISS lines go to stdout. Exit status 0 when the
benchmark ran (also when a goal is missed), 1 on a setup failure, 130 when interrupted. Needs root.

Quick run:  PYTHONPATH=Tests python3 Tests/Benchmarks/dead_cost_bench.py --sizes 10000,50000 --rounds 2 --window 10
"""

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from lab import bench as benchlab
from lab.bench import process_cpu_seconds, rss_mb
from lab.agent import Agent, pool_yaml
from lab.netns import NamedNamespace, wait_for
from lab.traffic import BulkPeer

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

PREFIX = "crdead-"
CLIENT_IP = "10.232.0.1"
A, B = "10.232.0.2", "10.232.0.3"
OTHER_PORT = 7400
OTHER_DESTS = [(A, OTHER_PORT), (B, OTHER_PORT), (A, OTHER_PORT + 1), (B, OTHER_PORT + 1)]
BACKENDS = ["10.232.0.11", "10.232.0.12", "10.232.0.13"]
BACKEND_PORT = 7443
DEAD = BACKENDS[2]
AGENT_LISTEN = ("127.0.0.1", 9847)
PER_DESTINATION_LIMIT = 60000  # the client has one address: ephemeral ports 1024-65535 per destination

GOAL_CPU_PERCENT = 2.0
GOAL_FIRST_MINUTE_MS = 200.0
GOAL_LATER_MS = 1000.0
GOAL_SIZE = 50000
FIRST_MINUTE = 60.0

PR_SET_PDEATHSIG = 1


def log(message):
    try:
        print(f"[dead {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
    except OSError:  # stderr gone (a closed pipe): keep going, the cleanup must still run
        pass


# =============================================================================================
# The benchmark


def set_pdeathsig():
    """preexec_fn: the child (and what it execs) gets SIGKILL when the benchmark dies, even by SIGKILL."""
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)






def split(total, parts):
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def percentile(values, fraction):
    ordered = sorted(values)
    if not ordered:
        return None
    index = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[index]


DOWN_RE = re.compile(r'backend (down|dead)\b')
REAPED_RE = re.compile(r'(msg="?reaped\b|"msg":\s*"reaped")')


def start_agent(lab, binary, workdir, index):
    """`conn-reaper run --config FILE` in the client namespace."""
    config = os.path.join(workdir, f"agent{index}.yaml")
    with open(config, "w") as f:
        f.write(pool_yaml([{"name": "busy", "backends": [f"{ip}:{BACKEND_PORT}" for ip in BACKENDS],
                            "probe": {"type": "tcp", "interval": "1s", "timeout": "500ms", "rise": 2, "fall": 2}}],
                          listen=AGENT_LISTEN, log_format="logfmt"))
    return Agent(NamedNamespace(lab.client_ns), binary, ["--config", config], listen=AGENT_LISTEN,
                 start_new_session=True, preexec_fn=set_pdeathsig)


def wait_all_up(agent, timeout=30.0):
    agent.wait_ready(timeout)
    wait_for(lambda: all(state == "up" for state in agent.backend_states().values()), timeout,
             "the agent to count every backend up")


class Phase:
    def __init__(self, name):
        self.name = name
        self.cpu = []  # % of one core per round
        self.other = []  # % of one core used by everything else on the machine per round
        self.samples = []
        self.rss = None
        self.notes = []

    @property
    def cpu_median(self):
        return statistics.median(self.cpu) if self.cpu else None

    def latencies(self):
        return [s["ms"] for s in self.samples if s["result"] == "ECONNABORTED"]

    def missed(self):
        return [s for s in self.samples if s["result"] != "ECONNABORTED"]


class SizeResult:
    def __init__(self, size):
        self.size = size
        self.conntrack = None
        self.sockets_total = None
        self.phases = {}
        self.detect = None  # seconds from the drop to the agent's down line
        self.first_reap = None  # (seconds from the drop, line)
        self.problems = []
        self.notes = []


class Bench:
    def __init__(self, args, lab, workdir):
        self.args = args
        self.lab = lab
        self.workdir = workdir
        self.backends = None
        self.client = None
        self.agent = None
        self.agents = 0
        self.dropped = False
        self.others = {f"{ip}:{port}": 0 for ip, port in OTHER_DESTS}
        self.results = []

    # -- setup ---------------------------------------------------------------------------------
    def start_helpers(self):
        self.backends = BulkPeer(self.lab.server_ns, "bulk-backends", 0, ",".join(BACKENDS), BACKEND_PORT)
        self.client = BulkPeer(self.lab.client_ns, "bulk-client", 0)

    def grow(self, size):
        shares = split(size, len(OTHER_DESTS))
        todo = [(ip, port, share - self.others[f"{ip}:{port}"]) for (ip, port), share in zip(OTHER_DESTS, shares)]
        total = sum(max(0, n) for _, _, n in todo)
        if total == 0:
            return
        log(f"adding {total:,} established connections (to {size:,})")
        started = time.monotonic()
        for ip, port, n in todo:
            if n <= 0:
                continue
            connected, accepted, errors = self.lab.connect(ip, port, n)
            if connected != n or accepted != n or errors:
                raise RuntimeError(f"setting up {n} connections to {ip}:{port}: {connected} connected, "
                                   f"{accepted} accepted, errors {errors}")
            self.others[f"{ip}:{port}"] += n
        elapsed = time.monotonic() - started
        log(f"  {total:,} connections in {elapsed:.1f} s ({total / elapsed:.0f}/s)")

    def count_sockets(self):
        out = self.lab.client_run(["ss", "-Htn", "state", "established"]).stdout
        return sum(1 for line in out.splitlines() if line.strip())

    def count_conntrack(self):
        out = self.lab.client_run(["conntrack", "-C"]).stdout.strip()
        try:
            return int(out)
        except ValueError:
            return -1

    def drop(self, on):
        action = "-I" if on else "-D"
        benchlab.run(["iptables", action, "INPUT", "-d", DEAD, "-j", "DROP"], ns=self.lab.server_ns)
        self.dropped = on

    # -- measuring -----------------------------------------------------------------------------
    def cpu_rounds(self, phase, rounds, deadline=None):
        for index in range(rounds):
            if deadline is not None and time.monotonic() + self.args.window > deadline:
                phase.notes.append(f"{phase.name}: {index} of {rounds} rounds fit before the phase ended")
                break
            before = process_cpu_seconds(self.agent.pid)
            busy = benchlab.busy_cpu_seconds()
            started = time.monotonic()
            time.sleep(self.args.window)
            elapsed = time.monotonic() - started
            self.agent.check_running()
            used = process_cpu_seconds(self.agent.pid) - before
            other = max(0.0, benchlab.busy_cpu_seconds() - busy - used)
            phase.cpu.append(100 * used / elapsed)
            phase.other.append(100 * other / elapsed)
            log(f"  {phase.name} round {index + 1}/{rounds}: agent {phase.cpu[-1]:.1f}% of a core "
                f"(other work on the machine {phase.other[-1]:.0f}%)")
        phase.rss = rss_mb(self.agent.pid)

    def dead_phase(self, phase, rounds, deadline=None):
        a = self.args
        asked = time.monotonic()
        self.client.send("sample", dst=DEAD, port=BACKEND_PORT, timeout=a.abort_timeout, gap_min=0.3, gap_max=0.7)
        if self.client.wait_event("sampling", 30, after=asked) is None:
            raise RuntimeError("the client peer did not start sampling")
        try:
            self.cpu_rounds(phase, rounds, deadline)
        finally:
            self.client.send("stop")
            phase.samples = self.client.receive()["samples"]
        lat = phase.latencies()
        missed = phase.missed()
        if lat:
            log(f"  {phase.name}: {len(phase.samples)} connects, ended in p50 {statistics.median(lat):.0f} / "
                f"p95 {percentile(lat, 0.95):.0f} / max {max(lat):.0f} ms; {len(missed)} not ended")
        else:
            log(f"  {phase.name}: {len(phase.samples)} connects, none ended with ECONNABORTED")

    # -- one socket count ---------------------------------------------------------------------------
    def run_size(self, size):
        a = self.args
        result = SizeResult(size)
        self.results.append(result)
        self.grow(size)
        held = {}
        for ip in BACKENDS:
            answer = self.client.call("connect", dst=ip, port=BACKEND_PORT, n=a.backend_conns, timeout=20)
            if answer["connected"] != a.backend_conns:
                raise RuntimeError(f"holding {a.backend_conns} connections to {ip}:{BACKEND_PORT}: {answer}")
            held[f"{ip}:{BACKEND_PORT}"] = answer["connected"]
        result.sockets_total = self.count_sockets()
        result.conntrack = self.count_conntrack()
        expected = size + len(BACKENDS) * a.backend_conns
        if result.sockets_total < expected:
            raise RuntimeError(f"{result.sockets_total} established sockets in the client namespace, expected {expected}")
        if result.conntrack < expected:
            raise RuntimeError(f"{result.conntrack} conntrack entries in the client namespace, expected at least "
                               f"{expected} (nf_conntrack_max is shared by every namespace on the machine)")
        log(f"{size:,} other connections: {result.sockets_total:,} established sockets, "
            f"{result.conntrack:,} conntrack entries in the client namespace; starting the agent")
        self.agents += 1
        self.agent = start_agent(self.lab, a.binary, self.workdir, self.agents)
        try:
            wait_all_up(self.agent)
            time.sleep(a.warmup)
            up = result.phases["up"] = Phase("all up")
            self.cpu_rounds(up, a.rounds)

            log(f"dropping every packet to {DEAD} in the server namespace")
            self.drop(True)
            t_drop = time.monotonic()
            down_line = self.agent.wait_line(lambda line: DEAD in line.text and DOWN_RE.search(line.text), 30, t_drop)
            if down_line is None:
                raise RuntimeError(f"the agent did not log {DEAD} down/dead within 30 s:\n{self.agent.log_text(8)}")
            t_down = down_line.t
            result.detect = t_down - t_drop
            log(f"  agent: {down_line.text.strip()[:200]} ({result.detect:.2f} s after the drop)")
            reap_line = self.agent.wait_line(lambda line: DEAD in line.text and REAPED_RE.search(line.text), 10, t_drop)
            if reap_line is None:
                result.problems.append("no reap of the dead backend logged within 10 s of its down line")
            else:
                result.first_reap = (reap_line.t - t_drop, reap_line.text.strip())
                log(f"  agent: {reap_line.text.strip()[:200]}")
            time.sleep(1.0)
            self.check_held(result, held)

            first = result.phases["first"] = Phase("one dead, first minute")
            self.dead_phase(first, a.rounds, deadline=t_drop + FIRST_MINUTE)
            if a.long:
                start_later = t_down + FIRST_MINUTE + 1
                wait = start_later - time.monotonic()
                if wait > 0:
                    log(f"  waiting {wait:.0f} s for the first minute down to pass")
                    time.sleep(wait)
                later = result.phases["later"] = Phase("one dead, after a minute")
                self.dead_phase(later, a.rounds)
            log_lines = [line.text for line in self.agent.log() if line.t >= t_drop]
            errors = [line for line in log_lines if re.search(r'level=(error|critical)', line)]
            if errors:
                result.notes.append(f"the agent logged {len(errors)} errors during the run, e.g. {errors[0][:200]}")
        finally:
            self.agent.stop()
            self.agent = None
            if self.dropped:
                self.drop(False)
            self.client.call("abort")
            self.backends.call("close_ip", ip=DEAD)
        return result

    def check_held(self, result, held):
        keys = self.client.call("check")["keys"]
        dead_key = f"{DEAD}:{BACKEND_PORT}"
        for key, count in held.items():
            state = keys.get(key, {"alive": 0, "ended": {}})
            if key == dead_key:
                if state["alive"]:
                    result.problems.append(f"{state['alive']} of {count} held connections to the dead backend "
                                           f"still alive 1 s after the first reap")
                else:
                    log(f"  all {count} held connections to the dead backend ended: {state['ended']}")
            elif state["alive"] != count:
                result.problems.append(f"{count - state['alive']} of {count} connections to live backend {key} "
                                       f"were ended: {state['ended']}")


# =============================================================================================
# Report


def fmt_cpu(phase):
    if phase is None or not phase.cpu:
        return "-"
    if len(phase.cpu) == 1:
        return f"{phase.cpu[0]:.1f}"
    return f"{phase.cpu_median:.1f} ({min(phase.cpu):.1f}-{max(phase.cpu):.1f})"


def fmt_latency(phase):
    if phase is None:
        return "-"
    lat = phase.latencies()
    if not lat:
        return f"none ended ({len(phase.samples)} connects)"
    return f"{statistics.median(lat):.0f} / {percentile(lat, 0.95):.0f} / {max(lat):.0f}"


def fmt_missed(phase, timeout):
    if phase is None:
        return "-"
    missed = phase.missed()
    kinds = {}
    for s in missed:
        kinds[s["result"]] = kinds.get(s["result"], 0) + 1
    text = f"{len(missed)}/{len(phase.samples)}"
    if missed:
        text += " (" + ", ".join(f"{'not ended in %.0f s' % timeout if k == 'timeout' else k}: {v}"
                                 for k, v in sorted(kinds.items())) + ")"
    return text


def latency_verdict(phase, limit_ms):
    """Every connect ended with ECONNABORTED within the limit."""
    lat = phase.latencies()
    if not phase.samples:
        return None, "no connects sampled"
    worst = max(lat) if lat else None
    ok = not phase.missed() and worst is not None and worst <= limit_ms
    detail = (f"{len(lat)}/{len(phase.samples)} ended, max {worst:.0f} ms, p95 {percentile(lat, 0.95):.0f} ms"
              if lat else f"0/{len(phase.samples)} ended")
    return ok, detail


def render(bench, args, started, busy_before):
    out = []
    uname = platform.uname()
    out.append("### conn-reaper: cost of keeping a dead backend reaped on a busy node")
    out.append("")
    others = [v for r in bench.results for p in r.phases.values() for v in p.other]
    other_avg = statistics.mean(others) if others else 0.0
    out.append(f"Kernel {uname.release}, {os.cpu_count()} cores, conn-reaper at {args.rev or '?'}{args.dirty} "
               f"(`{args.binary_shown}`, {args.binary_kind}, built {args.binary_mtime}), "
               f"{time.strftime('%Y-%m-%d %H:%M')}; total run {time.monotonic() - started:.0f} s. "
               f"Other work used {busy_before:.0f}% of one core just before the start and {other_avg:.0f}% on "
               f"average during the measured windows (/proc/stat busy time minus the agent's; 200% = both cores).")
    if other_avg > 25:
        out.append("**Other processes competed for the CPU during the measured windows: the figures are noisy; "
                   "rerun on a quiet machine (`--wait-quiet`).**")
    out.append(f"Pool of 3 backends (tcp probe every 1 s, timeout 500 ms, rise 2, fall 2), {args.backend_conns} held "
               f"connections to each; one backend made dead by dropping its packets in the server namespace. "
               f"Agent CPU = utime+stime from /proc/PID/stat over {args.rounds} windows of {args.window:.0f} s, "
               f"median (min-max), % of one core. Connect latency: non-blocking connect() to the dead backend "
               f"from the client namespace every 0.3-0.7 s during the windows, time until it fails with "
               f"ECONNABORTED (p50 / p95 / max ms).")
    out.append("")
    head = ["other sockets", "established / conntrack in the namespace", "agent CPU % (all up)",
            "agent CPU % (one dead, first minute)", "extra for one dead", "connect ended p50/p95/max ms (first minute)",
            "connects not ended (first minute)"]
    if args.long:
        head += ["agent CPU % (one dead, after a minute)", "connect ended p50/p95/max ms (after a minute)",
                 "connects not ended (after a minute)"]
    head += ["down detected after drop"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for r in bench.results:
        up, first, later = r.phases.get("up"), r.phases.get("first"), r.phases.get("later")
        extra = (f"{first.cpu_median - up.cpu_median:+.1f}" if up and first and up.cpu and first.cpu else "-")
        row = [f"{r.size:,}", f"{r.sockets_total:,} / {r.conntrack:,}" if r.conntrack is not None else "-",
               fmt_cpu(up), fmt_cpu(first), extra, fmt_latency(first), fmt_missed(first, args.abort_timeout)]
        if args.long:
            row += [fmt_cpu(later), fmt_latency(later), fmt_missed(later, args.abort_timeout)]
        row += [f"{r.detect:.1f} s" if r.detect is not None else "-"]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    goals = []
    for r in bench.results:
        tag = f"{r.size:,} other sockets" + ("" if r.size == GOAL_SIZE else f" (goal stated for {GOAL_SIZE:,})")
        checks = [("first", "first minute down", GOAL_FIRST_MINUTE_MS)]
        if args.long:
            checks.append(("later", "after the first minute", GOAL_LATER_MS))
        for key, when, limit in checks:
            phase = r.phases.get(key)
            if phase is None or not phase.cpu:
                goals.append(f"- Goal, {tag}, {when}: **VOID** (not measured: the run stopped early)")
                continue
            cpu_ok = phase.cpu_median < GOAL_CPU_PERCENT
            goals.append(f"- Goal, {tag}, one backend dead, {when}: agent < {GOAL_CPU_PERCENT:.0f}% of a core: "
                         f"median {phase.cpu_median:.1f}% → **{'PASS' if cpu_ok else 'MISS'}**")
            ok, detail = latency_verdict(phase, limit)
            verdict = "VOID" if ok is None else ("PASS" if ok else "MISS")
            goals.append(f"- Goal, {tag}, {when}: every new connect to the dead backend ended within "
                         f"{limit:.0f} ms: {detail} → **{verdict}**")
    if not args.long:
        goals.append("- (The goal's CPU figure is an average over minutes down: `--long` also measures after the "
                     "first minute.)")
    out.extend(goals)
    notes = []
    for r in bench.results:
        for p in r.phases.values():
            notes.extend(f"{r.size:,}: {n}" for n in p.notes)
            if p.rss is not None and not math.isnan(p.rss):
                notes.append(f"{r.size:,}, {p.name}: agent RSS {p.rss:.1f} MB; other work per window "
                             + ", ".join(f"{v:.0f}%" for v in p.other))
        if r.first_reap:
            notes.append(f"{r.size:,}: first reap {r.first_reap[0]:.2f} s after the drop: `{r.first_reap[1][:220]}`")
        notes.extend(f"{r.size:,}: {n}" for n in r.notes)
        notes.extend(f"{r.size:,}: **problem**: {p}" for p in r.problems)
    if notes:
        out.append("")
        out.extend(f"- {n}" for n in notes)
    return "\n".join(out)


# =============================================================================================


def pick_binary(explicit):
    if explicit:
        return os.path.abspath(explicit), "--binary"
    if os.environ.get("CONN_REAPER"):
        return os.path.abspath(os.environ["CONN_REAPER"]), "$CONN_REAPER"
    release = os.path.join(REPO, ".build/release/conn-reaper")
    if os.access(release, os.X_OK):
        return release, "release build"
    return os.path.join(REPO, ".build/debug/conn-reaper"), "debug build (no release build found)"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000,100000",
                        help="other established connections, comma-separated (10000,50000,100000)")
    parser.add_argument("--rounds", type=int, default=3, help="CPU windows per phase (3)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per CPU window (10)")
    parser.add_argument("--long", action="store_true",
                        help="also measure after the first minute down (adds about a minute per size)")
    parser.add_argument("--abort-timeout", type=float, default=3.0,
                        help="a connect to the dead backend not ended after this many seconds counts as missed (3)")
    parser.add_argument("--backend-conns", type=int, default=100, help="held connections to each backend (100)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds after every backend is up before measuring (2)")
    parser.add_argument("--binary", help="conn-reaper binary (default $CONN_REAPER, else .build/release/conn-reaper "
                                         "if it exists, else .build/debug/conn-reaper)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before starting, wait up to SECONDS for the machine to go quiet")
    parser.add_argument("--raw", help="also write every measurement as JSON to this file")
    args = parser.parse_args()
    try:
        args.sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error("--sizes takes comma-separated whole numbers")
    if not args.sizes or min(args.sizes) < len(OTHER_DESTS):
        parser.error(f"--sizes: at least {len(OTHER_DESTS)} each")
    if max(args.sizes) > PER_DESTINATION_LIMIT * len(OTHER_DESTS):
        parser.error(f"--sizes: at most {PER_DESTINATION_LIMIT * len(OTHER_DESTS):,} (the client has one address)")
    if args.rounds < 1 or args.window <= 0:
        parser.error("--rounds at least 1, --window above 0")
    if args.rounds * args.window > FIRST_MINUTE - 8:
        log(f"note: {args.rounds} x {args.window:.0f} s do not fit in the first minute down after detection: "
            "the first-minute phase takes the rounds that fit")
    args.binary, args.binary_kind = pick_binary(args.binary)
    return args


def main():
    args = parse_args()
    busy_before = benchlab.start("dead_cost_bench.py", args.binary, args.wait_quiet)
    started = time.monotonic()

    benchlab.remove_stale_workdirs(PREFIX)
    workdir = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    args.binary_shown = os.path.relpath(args.binary, REPO) if args.binary.startswith(REPO + "/") else args.binary
    args.rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "Sources", "Package.swift"],
                           capture_output=True, text=True).stdout.strip()
    args.dirty = " with uncommitted changes under Sources/ (the binary may hold some of them)" if dirty else ""
    args.binary_mtime = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.stat(args.binary).st_mtime))
    pinned = os.path.join(workdir, "conn-reaper")
    shutil.copy2(args.binary, pinned)  # a rebuild in the tree during the run must not change what is measured
    args.binary = pinned
    log(f"binary {args.binary_shown} ({args.binary_kind}, built {args.binary_mtime}); sizes "
        + ", ".join(f"{s:,}" for s in args.sizes))

    servers = max(1, math.ceil(max(args.sizes) / 12000))  # SO_REUSEPORT spreads by hash: well below 20,000 fds each
    lab = benchlab.Lab([A, B] + BACKENDS, servers=servers, prefix=PREFIX)
    bench = None
    status = 0
    try:
        lab.open()
        log(f"namespaces {lab.client_ns} / {lab.server_ns}, {servers} server holders")
        for ip, port in OTHER_DESTS:
            lab.listen(ip, port)
        bench = Bench(args, lab, workdir)
        bench.start_helpers()
        for size in args.sizes:
            bench.run_size(size)
        print(render(bench, args, started, busy_before), flush=True)
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        status = 130
    except Exception as error:
        log(f"benchmark failed: {type(error).__name__}: {error}")
        status = 1
    finally:
        log("stopping the agent and helpers, removing namespaces")
        if bench is not None:
            if bench.agent is not None:
                bench.agent.stop()
            for helper in (bench.client, bench.backends):
                if helper is not None:
                    try:
                        helper.stop()
                    except Exception as error:  # keep cleaning
                        log(f"stopping the {helper.role} helper: {error}")
        lab.close()
        if bench is not None and args.raw:
            with open(args.raw, "w") as f:
                json.dump([{"size": r.size, "sockets": r.sockets_total, "conntrack": r.conntrack, "detect_s": r.detect,
                            "problems": r.problems,
                            "phases": {k: {"cpu": p.cpu, "other": p.other, "rss_mb": p.rss, "samples": p.samples}
                                       for k, p in r.phases.items()}} for r in bench.results], f, indent=1)
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
