#!/usr/bin/env python3
"""Purge benchmark for conn-reaper: `conn-reaper purge A:P` against the anchor pair
`ss -K dst A dport = P` + `conntrack -D -d A -p tcp --dport P`, on real connections in throwaway
network namespaces.

Scenarios
  targets   N target connections to A:P among N decoys (A:P+1 and B:P), all ESTABLISHED and
            conntrack-tracked in the client namespace. Targets are re-created before every timed
            run; each run is verified afterwards (targets gone from ss and conntrack, decoys intact),
            a run that fails verification is void and reported. Twice: with the backend live (each
            RST is delivered to its server socket here, on the purging process's CPU time) and dead
            (what reaches it is dropped on arrival, as toward a remote backend that died).
  nomatch   U unrelated established connections (decoys on five destinations); time a purge of an
            address no socket uses (X:P). Verified: nothing was ended.

Goals (from the issue): at 20,000 targets among 40,000 sockets conn-reaper >= 4x faster than the pair;
a purge matching nothing with 100,000 unrelated sockets under 10 ms in the agent (its own duration: no
process start), and the CLI's within its start-up plus one walk of each table.

Wall time is measured around the subprocess (time.perf_counter); the benchmark enters the client
namespace itself (setns), so no wrapper process is timed. Progress goes to stderr, the Markdown
table to stdout. Needs root. `make bench` runs it on the release binary.

Quick run:  PYTHONPATH=Tests python3 Tests/Benchmarks/purge_bench.py --targets 2000 --decoys 2000 --rounds 3 --unrelated 10000
"""

import argparse
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from lab import bench as benchlab
from lab.bench import log
from lab.traffic import broadcast

A, B, C = "10.232.0.2", "10.232.0.3", "10.232.0.4"
NOWHERE = "10.232.0.9"  # in the lab subnet, assigned to no interface, used by no socket
SERVER_IPS = [A, B, C]
REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
SUMMARY_RE = re.compile(r"ended (\d+) sockets, (\d+) conntrack entries, (\d+) errors, ([\d.]+) ms")
GOAL_SPEEDUP = 4.0
GOAL_AGENT_NOMATCH_MS = 10.0
PER_DESTINATION_LIMIT = 60000  # client ephemeral range 1024-65535 per destination, with headroom


# ---------------------------------------------------------------------------------------------
# Tools: what is timed, and what a run must leave behind


class Tool:
    """One row family of the table. `commands` are timed one after another (the anchor is two);
    each part gets its own row when there are several, plus the sum."""

    def __init__(self, name, commands, ends_sockets, ends_conntrack, kind, part_names=None):
        self.name = name
        self.commands = commands
        self.ends_sockets = ends_sockets
        self.ends_conntrack = ends_conntrack
        self.kind = kind  # "anchor" or "reaper"
        self.part_names = part_names or []


def reaper_tools(binary, dest, breakdown, baseline=None):
    tools = [
        Tool(f"conn-reaper purge {dest}", [[binary, "purge", dest]], True, True, "reaper"),
        Tool(f"conn-reaper purge -o json {dest}", [[binary, "purge", "-o", "json", dest]], True, True, "reaper-json"),
    ]
    if breakdown:
        tools += [
            Tool(f"conn-reaper purge --conntrack-flush never {dest} (entry-by-entry deletes)",
                 [[binary, "purge", "--conntrack-flush", "never", dest]], True, True, "reaper"),
            Tool(f"conn-reaper purge --no-conntrack {dest} (sockets only)",
                 [[binary, "purge", "--no-conntrack", dest]], True, False, "reaper"),
            Tool(f"conn-reaper purge --no-sockets {dest} (conntrack only)",
                 [[binary, "purge", "--no-sockets", dest]], False, True, "reaper"),
        ]
    if baseline:
        # An A/B in one lab: the host's drift between two runs is larger than most changes.
        tools.append(Tool(f"baseline {os.path.basename(baseline)}: purge {dest}", [[baseline, "purge", dest]], True, True, "reaper"))
    return tools


def anchor_tool(ip, port):
    ss = ["ss", "-K", "dst", ip, "dport", "=", str(port)]
    ct = ["conntrack", "-D", "-d", ip, "-p", "tcp", "--dport", str(port)]
    return Tool("anchor: ss -K + conntrack -D", [ss, ct], True, True, "anchor",
                part_names=[" ".join(ss), " ".join(ct)])


# ---------------------------------------------------------------------------------------------
# Measuring


class Run:
    def __init__(self, tool, round_index):
        self.tool = tool
        self.round = round_index
        self.parts = []  # wall seconds per command
        self.cpu = []  # (user, sys) CPU seconds per command
        self.own_ms = None  # conn-reaper's own duration_ms
        self.problems = []
        self.counts = None  # (sockets ended, conntrack deleted) as the tool reported
        self.other_cpu = 0.0  # CPU seconds other processes used while this run was timed

    @property
    def wall(self):
        return sum(self.parts)

    @property
    def user(self):
        return sum(u for u, _ in self.cpu)

    @property
    def system(self):
        return sum(s for _, s in self.cpu)

    @property
    def valid(self):
        return not self.problems


class Bench:
    def __init__(self, args, lab, workdir):
        self.args = args
        self.lab = lab
        self.workdir = workdir
        self.results = {}  # scenario -> list of Run
        self.notes = []
        self.other_cpu = 0.0  # CPU seconds not charged to the timed tool, summed over timed runs
        self.timed_wall = 0.0
        self.decoys = {}  # "ip:port" -> connections, set up once for the targets scenarios

    # -- timed execution -----------------------------------------------------------------------
    def execute(self, run, expect_matches):
        """Time each command of the tool in the client namespace; check exit status and own counts."""
        for index, argv in enumerate(run.tool.commands):
            out_path = os.path.join(self.workdir, f"out{index}")
            err_path = os.path.join(self.workdir, f"err{index}")
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                with self.lab.in_client():
                    busy = benchlab.busy_cpu_seconds()
                    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
                    started = time.perf_counter()
                    status = subprocess.call(argv, stdout=out, stderr=err)
                    elapsed = time.perf_counter() - started
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    busy = benchlab.busy_cpu_seconds() - busy
            run.parts.append(elapsed)
            user, system = after.ru_utime - usage.ru_utime, after.ru_stime - usage.ru_stime
            run.cpu.append((user, system))
            run.other_cpu += max(0.0, busy - user - system)
            self.other_cpu += max(0.0, busy - user - system)
            self.timed_wall += elapsed
            with open(err_path, errors="replace") as f:
                stderr = f.read()
            name = os.path.basename(argv[0])
            if name == "conntrack" and status == 1 and re.search(r"\b0 flow entries have been deleted", stderr) \
                    and expect_matches == 0:
                status = 0  # conntrack -D exits 1 when it deleted nothing
            if status != 0:
                run.problems.append(f"{' '.join(argv[:3])}... exited {status}: {stderr.strip()[-200:]}")
            if run.tool.kind.startswith("reaper"):
                self.read_reaper_output(run, out_path, stderr)

    def read_reaper_output(self, run, out_path, stderr):
        if run.tool.kind == "reaper-json":
            try:
                with open(out_path) as f:
                    document = json.load(f)
                run.own_ms = float(document["duration_ms"])
                counts = document["counts"]
                run.counts = (counts["sockets_destroyed"], counts["conntrack_deleted"])
                if counts.get("errors") or document.get("errors"):
                    run.problems.append(f"conn-reaper reported errors: {document.get('errors')}")
                return
            except (OSError, ValueError, KeyError) as error:
                run.problems.append(f"unreadable JSON output: {error}")
                return
        match = SUMMARY_RE.search(stderr)
        if not match:
            run.problems.append(f"no summary line on stderr: {stderr.strip()[-200:]}")
            return
        sockets, entries, errors, ms = match.groups()
        run.own_ms = float(ms)
        run.counts = (int(sockets), int(entries))
        if int(errors):
            run.problems.append(f"conn-reaper reported {errors} errors: {stderr.strip()[-300:]}")

    # -- observing the namespace -----------------------------------------------------------------
    def ss_established(self):
        """Established client sockets per peer ip:port."""
        result = self.lab.client_run(["ss", "-Htn", "state", "established"])
        counts = {}
        for line in result.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 4:
                counts[fields[3]] = counts.get(fields[3], 0) + 1
        return counts

    def ss_target_count(self, ip, port):
        """The issue's check, verbatim: ss -tn state established dst A dport = P | wc -l (minus header)."""
        result = self.lab.client_run(["ss", "-tn", "state", "established", "dst", ip, "dport", "=", str(port)])
        return max(0, len(result.stdout.splitlines()) - 1)

    def conntrack_entries(self):
        """Conntrack entries per original destination ip:port: (all states, ESTABLISHED)."""
        result = self.lab.client_run(["conntrack", "-L", "-p", "tcp"])
        total, established = {}, {}
        for line in result.stdout.splitlines():
            fields = line.split()
            dst = next((f[4:] for f in fields if f.startswith("dst=")), None)
            dport = next((f[6:] for f in fields if f.startswith("dport=")), None)
            if dst is None or dport is None:
                continue
            key = f"{dst}:{dport}"
            total[key] = total.get(key, 0) + 1
            if len(fields) > 3 and fields[3] == "ESTABLISHED":
                established[key] = established.get(key, 0) + 1
        return total, established

    def conntrack_count(self):
        result = self.lab.client_run(["conntrack", "-C"])
        try:
            return int(result.stdout.strip())
        except ValueError:
            return -1

    # -- setup -----------------------------------------------------------------------------------
    def connect(self, ip, port, n, what):
        started = time.perf_counter()
        connected, accepted, errors = self.lab.connect(ip, port, n)
        elapsed = time.perf_counter() - started
        if connected != n or accepted != n or errors:
            raise RuntimeError(f"setting up {n} {what} to {ip}:{port}: {connected} connected, "
                               f"{accepted} accepted, errors {errors}")
        return elapsed

    def add_decoys(self, plan):
        """plan: list of (ip, port, count) to add."""
        total = sum(n for _, _, n in plan)
        if total == 0:
            return
        log(f"setting up {total} decoy connections on {len(plan)} destinations")
        started = time.perf_counter()
        for ip, port, n in plan:
            if n > 0:
                self.connect(ip, port, n, "decoys")
        elapsed = time.perf_counter() - started
        log(f"  {total} decoys in {elapsed:.1f} s ({total / elapsed:.0f}/s)")

    # -- scenario 1 --------------------------------------------------------------------------------
    def scenario_targets(self, dead):
        """`dead`: the backend's host is gone when the purge runs: what reaches it is dropped where it
        arrives (raw PREROUTING in the server namespace), so the RSTs cost their sending and no more,
        as toward a remote backend that died. Live: each RST is delivered to a server socket on this
        machine, and that work (a softirq, a wakeup) is charged to the purging process."""
        args = self.args
        port, n = args.port, args.targets
        target_key = f"{A}:{port}"
        if not self.decoys:
            decoy_dests = [(A, port + 1), (B, port)]
            shares = split(args.decoys, len(decoy_dests))
            self.decoys = {f"{ip}:{p}": share for (ip, p), share in zip(decoy_dests, shares)}
            self.add_decoys([(ip, p, share) for (ip, p), share in zip(decoy_dests, shares)])
        tools = [anchor_tool(A, port)] + reaper_tools(args.binary, target_key, args.breakdown, args.baseline)
        scenario = (f"{n:,} targets among {n + args.decoys:,} sockets, backend "
                    + ("dead (its packets dropped on arrival)" if dead else "live (RSTs reach its sockets)"))
        runs = self.results.setdefault(scenario, [])
        setup_seconds = []
        self.ensure_clean(target_key)
        drop = ["PREROUTING", "-t", "raw", "-d", A, "-p", "tcp", "--dport", str(port), "-j", "DROP"]
        for round_index in range(args.rounds):
            for offset in range(len(tools)):
                tool = tools[(round_index + offset) % len(tools)]  # rotate the order every round
                setup_seconds.append(self.connect(A, port, n, "targets"))
                run = Run(tool, round_index)
                before = self.conntrack_count()
                expected = args.decoys + n
                if before != expected:
                    run.problems.append(f"before the run conntrack held {before} entries, expected {expected}")
                if dead:
                    benchlab.run(["iptables", "-I"] + drop, ns=self.lab.server_ns)
                try:
                    self.execute(run, expect_matches=n)
                finally:
                    if dead:
                        benchlab.run(["iptables", "-D"] + drop, ns=self.lab.server_ns)
                self.verify_targets(run, target_key, n, dead=dead)
                runs.append(run)
                self.progress(scenario, run, args.rounds)
                if dead:
                    broadcast(self.lab.servers, "abort", key=target_key)  # their RSTs were dropped
                self.ensure_clean(target_key)
        self.notes.append(f"{scenario}: re-creating {n:,} targets took {statistics.median(setup_seconds):.2f} s "
                          f"(median of {len(setup_seconds)})")

    def verify_targets(self, run, target_key, n, dead=False):
        tool = run.tool
        ip, port = target_key.rsplit(":", 1)
        if run.counts is not None:
            want = (n if tool.ends_sockets else 0, n if tool.ends_conntrack else 0)
            if run.counts != want:
                run.problems.append(f"tool reported {run.counts[0]} sockets / {run.counts[1]} entries, expected {want}")
        client_live, server_live = self.lab.reap(settle=0.05)
        left = self.ss_target_count(ip, int(port))
        established = self.ss_established()
        entries, entries_established = self.conntrack_entries()
        if tool.ends_sockets:
            if left:
                run.problems.append(f"{left} target sockets still ESTABLISHED (ss)")
            if client_live.get(target_key, 0):
                run.problems.append(f"{client_live[target_key]} target sockets still healthy in the client holders")
            if server_live.get(target_key, 0) and not dead:
                run.problems.append(f"{server_live[target_key]} server ends of targets got no RST")
        elif left != n:
            run.problems.append(f"{left} target sockets ESTABLISHED, expected {n} (conntrack-only run)")
        if tool.ends_conntrack and entries.get(target_key, 0):
            run.problems.append(f"{entries[target_key]} target conntrack entries left")
        for key, count in self.decoys.items():
            if established.get(key, 0) != count:
                run.problems.append(f"decoys {key}: {established.get(key, 0)} ESTABLISHED in ss, expected {count}")
            if entries_established.get(key, 0) != count:
                run.problems.append(f"decoys {key}: {entries_established.get(key, 0)} conntrack entries, expected {count}")
            if client_live.get(key, 0) != count or server_live.get(key, 0) != count:
                run.problems.append(f"decoys {key}: holders see {client_live.get(key, 0)}/{server_live.get(key, 0)} "
                                    f"alive, expected {count}")

    def ensure_clean(self, target_key):
        """Untimed: no target socket and no target conntrack entry before the next setup."""
        ip, port = target_key.rsplit(":", 1)
        client_live, _ = self.lab.reap()
        if client_live.get(target_key, 0):
            self.lab.abort(target_key)
        if self.conntrack_count() != sum(self.decoys.values()):
            self.lab.client_run(["conntrack", "-D", "-d", ip, "-p", "tcp", "--dport", port])
        client_live, server_live = self.lab.reap(settle=0.05)
        count = self.conntrack_count()
        if client_live.get(target_key, 0) or server_live.get(target_key, 0) or count != sum(self.decoys.values()):
            raise RuntimeError(f"cannot clean up targets: client {client_live.get(target_key, 0)}, "
                               f"server {server_live.get(target_key, 0)}, conntrack {count}")

    # -- scenario 2 --------------------------------------------------------------------------------
    def scenario_nomatch(self):
        args = self.args
        port = args.port
        dests = [(A, port + 1), (B, port), (A, port + 2), (B, port + 1), (C, port)]
        if not hasattr(self, "decoys"):
            self.decoys = {}
        total = max(args.unrelated, sum(self.decoys.values()))
        shares = split(total, len(dests))
        plan = []
        for (ip, p), share in zip(dests, shares):
            key = f"{ip}:{p}"
            have = self.decoys.get(key, 0)
            plan.append((ip, p, max(0, share - have)))
        self.add_decoys(plan)
        for ip, p, add in plan:
            key = f"{ip}:{p}"
            self.decoys[key] = self.decoys.get(key, 0) + add
        total = sum(self.decoys.values())
        dest = f"{NOWHERE}:{port}"
        tools = [anchor_tool(NOWHERE, port)] + reaper_tools(args.binary, dest, args.breakdown, args.baseline)
        tools.append(Tool("conn-reaper --version (process start only)", [[args.binary, "--version"]],
                          False, False, "startup"))
        scenario = f"no match, {total:,} unrelated sockets"
        runs = self.results.setdefault(scenario, [])
        for round_index in range(args.nomatch_rounds):
            for offset in range(len(tools)):
                tool = tools[(round_index + offset) % len(tools)]
                run = Run(tool, round_index)
                self.execute(run, expect_matches=0)
                if run.counts is not None and run.counts != (0, 0):
                    run.problems.append(f"tool reported {run.counts} ended, expected nothing")
                established = sum(self.ss_established().values())
                if established != total:
                    run.problems.append(f"{established} sockets ESTABLISHED, expected {total}")
                count = self.conntrack_count()
                if count != total:
                    run.problems.append(f"{count} conntrack entries, expected {total}")
                runs.append(run)
                self.progress(scenario, run, args.nomatch_rounds)
        client_live, server_live = self.lab.reap(settle=0.05)
        if client_live != self.decoys or server_live != self.decoys:
            self.notes.append(f"{scenario}: holders ended with client {client_live}, server {server_live}, "
                              f"expected {self.decoys}")

    # -- reporting ---------------------------------------------------------------------------------
    def progress(self, scenario, run, rounds):
        own = f" (own {run.own_ms:.1f} ms)" if run.own_ms is not None else ""
        parts = " + ".join(f"{p * 1000:.1f}" for p in run.parts) if len(run.parts) > 1 else ""
        state = "ok" if run.valid else "VOID: " + "; ".join(run.problems)
        log(f"{scenario} | round {run.round + 1}/{rounds} | {run.tool.name}: {run.wall * 1000:.1f} ms"
            f"{' = ' + parts if parts else ''}{own} | {state}")


def split(total, parts):
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def fmt_seconds(seconds):
    if seconds is None:
        return "-"
    return f"{seconds:.3f} s" if seconds >= 1 else f"{seconds * 1000:.1f} ms"


def summarize(values):
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def rows_for(runs):
    """Table rows (tool label, wall values, own values, void count, total) in tool order."""
    order, by_tool = [], {}
    for run in runs:
        if run.tool.name not in by_tool:
            order.append(run.tool)
            by_tool[run.tool.name] = []
        by_tool[run.tool.name].append(run)
    rows = []
    for tool in order:
        tool_runs = by_tool[tool.name]
        valid = [r for r in tool_runs if r.valid]
        void = len(tool_runs) - len(valid)
        if tool.kind == "anchor":
            for index, part in enumerate(tool.part_names):
                rows.append(dict(label=f"`{part}` (anchor part)", wall=[r.parts[index] for r in valid],
                                 user=[r.cpu[index][0] for r in valid], system=[r.cpu[index][1] for r in valid],
                                 own=[], void=void, total=len(tool_runs), kind="part"))
            rows.append(dict(label="**anchor: ss -K + conntrack -D**", wall=[r.wall for r in valid], own=[],
                             user=[r.user for r in valid], system=[r.system for r in valid],
                             void=void, total=len(tool_runs), kind="anchor"))
        else:
            label = f"`{tool.name}`"
            if tool.kind == "reaper" and "only" not in tool.name:
                label = f"**{label}**"
            rows.append(dict(label=label, wall=[r.wall for r in valid],
                             user=[r.user for r in valid], system=[r.system for r in valid],
                             own=[r.own_ms for r in valid if r.own_ms is not None], void=void,
                             total=len(tool_runs), kind=tool.kind, name=tool.name))
    return rows


def render(bench, args, started, busy_before):
    out = []
    uname = platform.uname()
    rev = args.rev
    out.append("### conn-reaper purge benchmark")
    out.append("")
    shown = args.binary_shown
    out.append(f"Kernel {uname.release}, {os.cpu_count()} cores, conn-reaper at {rev or '?'} "
               f"(`{os.path.relpath(shown, REPO) if shown.startswith(REPO) else shown}` built {args.binary_mtime}), "
               f"{time.strftime('%Y-%m-%d %H:%M')}; total run {time.monotonic() - started:.0f} s. "
               f"Other work used {busy_before:.0f}% of one core just before the start and "
               f"{100 * bench.other_cpu / max(bench.timed_wall, 1e-9):.0f}% on average during the timed runs "
               f"(/proc/stat busy time minus the timed tool's own CPU time; 200% = both cores).")
    if bench.other_cpu / max(bench.timed_wall, 1e-9) > 0.25:
        out.append("**Other processes competed for the CPU during the timed runs: the figures are inflated and noisy; "
                   "rerun on a quiet machine (`--wait-quiet`).**")
    hash_mode = ("the server ends live in the server namespace's own TCP hash, so the client's dumps walk "
                 "only client-side sockets (as with remote peers)") if not bench.lab.server_ehash.startswith("-") \
        else "the server ends share the host's TCP hash, so every dump walks both ends (--shared-hash)"
    out.append(f"Client namespace with conntrack on (iptables OUTPUT ctstate rule); {hash_mode}.")
    out.append("Wall time around each subprocess, run in the client namespace. \"vs anchor\" is "
               "anchor median / row median (above 1.00x = faster than `ss -K` + `conntrack -D`). "
               "\"own\" is conn-reaper's own `duration_ms` (JSON) or the duration on its stderr summary line; "
               "CPU is the child's user/system time (getrusage), softirq work it triggers included.")
    out.append("")
    out.append("| scenario | tool | runs | median | min | max | vs anchor | own duration (median) | CPU user / sys (median) |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    goals = []
    problems = []
    for scenario, runs in bench.results.items():
        rows = rows_for(runs)
        anchor = next((r for r in rows if r["kind"] == "anchor"), None)
        anchor_median = statistics.median(anchor["wall"]) if anchor and anchor["wall"] else None
        for row in rows:
            stats = summarize(row["wall"])
            median, low, high = stats if stats else (None, None, None)
            ratio = f"{anchor_median / median:.2f}x" if anchor_median and median and row["kind"] != "startup" else "-"
            own = f"{statistics.median(row['own']):.1f} ms" if row["own"] else "-"
            runs_text = f"{row['total'] - row['void']}/{row['total']}" + (" (void!)" if row["void"] else "")
            cpu = (f"{fmt_seconds(statistics.median(row['user']))} / {fmt_seconds(statistics.median(row['system']))}"
                   if row["user"] else "-")
            out.append(f"| {scenario} | {row['label']} | {runs_text} | {fmt_seconds(median)} | {fmt_seconds(low)} | "
                       f"{fmt_seconds(high)} | {ratio} | {own} | {cpu} |")
            row["median"] = median
        reaper = next((r for r in rows if r["kind"] == "reaper" and "only" not in r["name"]), None)
        if scenario.startswith("no match"):
            if reaper:
                among = scenario.split(", ")[1] + ("" if args.unrelated == 100000 else " (goal stated for 100,000)")
                # In the agent there is no process start: the purge's own duration is what a pass costs.
                own = statistics.median(reaper["own"]) if reaper["own"] else None
                goals.append(
                    f"- Goal: purge matching nothing among {among}, in the agent (own duration, no process start) "
                    f"< {GOAL_AGENT_NOMATCH_MS:.0f} ms: "
                    + (f"median {own:.1f} ms → **{'PASS' if own < GOAL_AGENT_NOMATCH_MS else 'MISS'}**" if own else "**VOID**"))
                start = next((r for r in rows if r["kind"] == "startup"), None)
                walks = [next((r for r in rows if r.get("name", "").endswith(suffix)), None)
                         for suffix in ("(sockets only)", "(conntrack only)")]
                if own and all(w and w["own"] for w in walks):
                    socket_walk, conntrack_walk = (statistics.median(w["own"]) for w in walks)
                    goals.append(
                        f"  - The floor in this run: the socket table's walk (the sockets-only purge's own duration) "
                        f"{socket_walk:.1f} ms, the conntrack table's (the conntrack-only purge's: both directions side by side) "
                        f"{conntrack_walk:.1f} ms; "
                        f"a pass that must look at both takes at least {max(socket_walk, conntrack_walk):.1f} ms here"
                        + (" (the goal is below it)" if max(socket_walk, conntrack_walk) >= GOAL_AGENT_NOMATCH_MS else ""))
                if start and all(w and w["own"] for w in walks) and reaper.get("median"):
                    bound = start["median"] + sum(statistics.median(w["own"]) for w in walks) / 1000
                    goals.append(
                        f"- Goal: the CLI's purge matching nothing within its start-up (`--version`) plus one walk of each "
                        f"table (the sockets-only and conntrack-only purges' own durations): {fmt_seconds(reaper['median'])} "
                        f"<= {fmt_seconds(bound)} → **{'PASS' if reaper['median'] <= bound else 'MISS'}**")
        elif reaper and anchor:
            goals.append(goal_line(
                f"{scenario}: conn-reaper >= {GOAL_SPEEDUP:.0f}x faster than the pair"
                + ("" if (args.targets, args.decoys) == (20000, 20000) else " (goal stated for 20,000 among 40,000)"),
                reaper, anchor, lambda m, a: a / m >= GOAL_SPEEDUP,
                lambda m, a: f"{fmt_seconds(a)} / {fmt_seconds(m)} = {a / m:.2f}x"))
        for run in runs:
            if not run.valid:
                problems.append(f"- {scenario}, round {run.round + 1}, {run.tool.name}: " + "; ".join(run.problems))
    out.append("")
    for line in goals:
        out.append(line)
    if problems:
        out.append("")
        out.append("Void runs (excluded from the statistics):")
        out.extend(problems)
    if bench.notes:
        out.append("")
        out.extend(f"- {note}" for note in bench.notes)
    return "\n".join(out), goals, problems


def goal_line(title, row, anchor, passes, describe):
    if row["void"] or (anchor and anchor["void"]) or row.get("median") is None or (anchor and anchor.get("median") is None):
        return f"- Goal: {title}: **VOID** (runs failed verification)"
    a = anchor["median"] if anchor else None
    verdict = "PASS" if passes(row["median"], a) else "MISS"
    return f"- Goal: {title}: {describe(row['median'], a)} → **{verdict}**"


# ---------------------------------------------------------------------------------------------


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", type=int, default=20000, help="target connections to A:P (20000)")
    parser.add_argument("--decoys", type=int, default=20000, help="decoy connections in the targets scenario (20000)")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of the targets scenario (7)")
    parser.add_argument("--unrelated", type=int, default=100000, help="unrelated connections in the no-match scenario (100000)")
    parser.add_argument("--nomatch-rounds", type=int, default=11, help="rounds of the no-match scenario (11)")
    parser.add_argument("--port", type=int, default=7000, help="target port P; decoys use P+1, P+2 (7000)")
    parser.add_argument("--only", choices=["targets", "nomatch"], help="run one scenario")
    parser.add_argument("--backend", choices=["live", "dead", "both"], default="both",
                        help="targets scenario: the backend alive (its sockets get the RSTs), dead (what reaches it "
                             "is dropped), or both (default)")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false",
                        help="skip the --no-conntrack / --no-sockets rows")
    parser.add_argument("--binary", default=os.environ.get("CONN_REAPER") or os.path.join(REPO, ".build/release/conn-reaper"),
                        help="conn-reaper binary ($CONN_REAPER, else .build/release/conn-reaper)")
    parser.add_argument("--shared-hash", action="store_true",
                        help="keep the server ends in the host's TCP established hash too (by default the server "
                             "namespace gets its own, so the client's dumps walk only the client sockets, as when "
                             "the peers are remote)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before starting, wait up to SECONDS for the machine to go quiet (other work < 25%% of one core)")
    parser.add_argument("--baseline", metavar="BINARY",
                        help="also time this conn-reaper binary's text purge in every round (an A/B in one lab)")
    parser.add_argument("--raw", help="also write every run as JSON to this file")
    parser.add_argument("--fail-on-miss", action="store_true", help="exit 3 when a goal is missed")
    args = parser.parse_args()
    args.binary = os.path.abspath(args.binary)
    if args.baseline:
        args.baseline = os.path.abspath(args.baseline)
        if not os.access(args.baseline, os.X_OK):
            parser.error(f"--baseline {args.baseline}: not an executable file")
    for name in ("targets", "rounds", "nomatch_rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.decoys < 2 or args.unrelated < 5:
        parser.error("--decoys needs at least 2, --unrelated at least 5")
    if args.targets > PER_DESTINATION_LIMIT or args.decoys / 2 > PER_DESTINATION_LIMIT \
            or args.unrelated / 5 > PER_DESTINATION_LIMIT:
        parser.error(f"at most {PER_DESTINATION_LIMIT} connections per destination "
                     "(targets, decoys/2, unrelated/5): the client has one address")
    return args


def main():
    args = parse_args()
    busy_before = benchlab.start("purge_bench.py", args.binary, args.wait_quiet)
    started = time.monotonic()

    scenario1 = args.only in (None, "targets")
    scenario2 = args.only in (None, "nomatch")
    peak = max(args.targets + args.decoys if scenario1 else 0, args.unrelated if scenario2 else 0,
               args.decoys if scenario2 and scenario1 else 0)
    servers = max(1, math.ceil(peak / 12000))  # SO_REUSEPORT spreads by hash: keep each well below 20,000 fds
    benchlab.remove_stale_workdirs('crbench-')
    workdir = tempfile.mkdtemp(prefix=f"crbench-{os.getpid()}-")
    # The flush canary's verdict is left for the rest of the boot (BootScopedMemo): here in the work
    # folder, so the first purge of the run tries it, as the first of a boot does, and the host's /run is untouched.
    os.environ.setdefault("CONN_REAPER_RUNTIME_DIRECTORY", os.path.join(workdir, "run"))
    # Pin the binary: a rebuild in the same tree during the run must not change what is measured.
    args.binary_shown = args.binary
    args.rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    args.binary_mtime = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.stat(args.binary).st_mtime))
    pinned = os.path.join(workdir, "conn-reaper")
    shutil.copy2(args.binary, pinned)
    args.binary = pinned
    if args.baseline:
        pinned_baseline = os.path.join(workdir, "baseline-" + os.path.basename(args.baseline))
        shutil.copy2(args.baseline, pinned_baseline)
        args.baseline = pinned_baseline
    lab = benchlab.Lab(SERVER_IPS, servers=servers, private_server_hash=not args.shared_hash)
    status = 0
    try:
        lab.open()
        log(f"namespaces {lab.client_ns} / {lab.server_ns}, {servers} server holders, server TCP hash "
            f"{'private' if not lab.server_ehash.startswith('-') else 'shared with the host'} "
            f"(tcp_ehash_entries {lab.server_ehash})")
        port = args.port
        for ip, p in [(A, port), (A, port + 1), (A, port + 2), (B, port), (B, port + 1), (C, port)]:
            lab.listen(ip, p)
        bench = Bench(args, lab, workdir)
        # Warm the page cache for every binary once, untimed.
        for argv in ([args.binary, "purge", f"{NOWHERE}:{port}"], ["ss", "-K", "dst", NOWHERE, "dport", "=", str(port)],
                     ["conntrack", "-D", "-d", NOWHERE, "-p", "tcp", "--dport", str(port)]):
            lab.client_run(argv)
        if scenario1:
            for dead in {"live": [False], "dead": [True], "both": [False, True]}[args.backend]:
                bench.scenario_targets(dead)
        if scenario2:
            bench.scenario_nomatch()
        table, goals, problems = render(bench, args, started, busy_before)
        print(table, flush=True)
        if args.raw:
            with open(args.raw, "w") as f:
                json.dump({scenario: [dict(tool=r.tool.name, round=r.round + 1, parts=r.parts, cpu=r.cpu, other_cpu=r.other_cpu, own_ms=r.own_ms,
                                           counts=r.counts, problems=r.problems) for r in runs]
                           for scenario, runs in bench.results.items()}, f, indent=1)
        if problems:
            status = 1
        elif args.fail_on_miss and any("MISS" in g for g in goals):
            status = 3
    except KeyboardInterrupt:
        log("interrupted: cleaning up")
        status = 130
    except Exception as error:
        log(f"benchmark failed: {type(error).__name__}: {error}")
        status = 1
    finally:
        log("removing namespaces and holder processes")
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
