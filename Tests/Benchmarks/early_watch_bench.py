#!/usr/bin/env python3
"""Cost of early detection's passive watch: `conn-reaper run` with a pool of 3 backends holding 1,000
established connections each (the issue's case), all up, measured with `early_detection` on and off
in alternating rounds in one run; the difference is what the watch (a lookup of 4 connections per backend
every 50 ms, a dump that picks them every 5 s) costs. Goal: under 1% of one core.

Lab: lab/bench.py's two namespaces; the backends are 10.232.0.11-13:7443 (bulk-backends in the server
namespace), the connections are held by a bulk-client in the client namespace, where the agent runs
(tcp probe every 1 s). Agent CPU is utime+stime from /proc/PID/stat over each window. Markdown table on
stdout, progress on stderr. Needs root and a release build.

Quick run:  PYTHONPATH=Tests python3 Tests/Benchmarks/early_watch_bench.py --rounds 2 --window 5
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

from lab import bench as benchlab
from lab.agent import Agent, pool_yaml
from lab.bench import log
from lab.netns import NamedNamespace
from lab.traffic import BulkPeer

BACKENDS = ["10.232.0.11", "10.232.0.12", "10.232.0.13"]
PORT = 7443
LISTEN = ("127.0.0.1", 9849)
GOAL_PERCENT = 1.0


def cpu_seconds(pid, part=None):
    """utime+stime of every thread of pid (or only "user" or "system")."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    user, system = int(fields[11]), int(fields[12])
    ticks = {"user": user, "system": system}.get(part, user + system)
    return ticks / os.sysconf("SC_CLK_TCK")


def start_agent(lab, binary, workdir, early):
    config = os.path.join(workdir, f"agent-{early}.yaml")
    with open(config, "w") as f:
        f.write(pool_yaml([{"name": "busy", "backends": [f"{ip}:{PORT}" for ip in BACKENDS], "early_detection": early,
                            "probe": {"type": "tcp", "interval": "1s", "timeout": "500ms", "rise": 2, "fall": 2}}],
                          listen=LISTEN))
    agent = Agent(NamedNamespace(lab.client_ns), binary, ["--config", config], listen=LISTEN, start_new_session=True)
    agent.wait_ready(30)
    return agent


def measure(agent, window):
    """Agent CPU over the window, % of one core: (total, user, system)."""
    before = [cpu_seconds(agent.pid, part) for part in (None, "user", "system")]
    started = time.monotonic()
    time.sleep(window)
    agent.check_running()
    elapsed = time.monotonic() - started
    after = [cpu_seconds(agent.pid, part) for part in (None, "user", "system")]
    return tuple(100 * (a - b) / elapsed for a, b in zip(after, before))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000, help="established connections per backend (1000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=10.0, help="seconds per CPU window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--binary", default=os.environ.get("CONN_REAPER", ".build/release/conn-reaper"))
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args()
    busy_before = benchlab.start("early_watch_bench.py", args.binary, args.wait_quiet)

    workdir = tempfile.mkdtemp(prefix=f"crearly-{os.getpid()}-")
    lab = benchlab.Lab(BACKENDS, servers=0, prefix="crearly-")
    results = {True: [], False: []}
    try:
        lab.open()
        backends = BulkPeer(lab.server_ns, "bulk-backends", 0, ",".join(BACKENDS), PORT)
        client = BulkPeer(lab.client_ns, "bulk-client", 0)
        for ip in BACKENDS:
            answer = client.call("connect", dst=ip, port=PORT, n=args.connections, timeout=60)
            if answer["connected"] != args.connections:
                sys.exit(f"holding {args.connections} connections to {ip}:{PORT}: {answer}")
        log(f"{len(BACKENDS)} backends x {args.connections} established connections; {args.rounds} rounds of "
            f"{args.window:.0f} s, early detection on and off alternately")
        for index in range(args.rounds):
            for early in (True, False) if index % 2 == 0 else (False, True):
                agent = start_agent(lab, args.binary, workdir, early)
                try:
                    time.sleep(args.warmup)
                    total, user, system = measure(agent, args.window)
                    results[early].append(total)
                    log(f"  round {index + 1}: early_detection {'on ' if early else 'off'} {total:.2f}% of a core "
                        f"(user {user:.2f}, system {system:.2f})")
                finally:
                    agent.stop()
        client.stop()
        backends.stop()
    finally:
        lab.close()
    on, off = statistics.median(results[True]), statistics.median(results[False])
    cost = on - off
    print(f"\n### Early detection's passive watch: {len(BACKENDS)} backends x {args.connections} connections "
          f"({args.rounds} rounds of {args.window:.0f} s each way)\n")
    print("| early_detection | agent CPU, % of one core (median) | min | max |")
    print("|---|---|---|---|")
    print(f"| on | {on:.2f} | {min(results[True]):.2f} | {max(results[True]):.2f} |")
    print(f"| off | {off:.2f} | {min(results[False]):.2f} | {max(results[False]):.2f} |")
    print(f"\n- The watch costs {cost:.2f}% of a core (goal < {GOAL_PERCENT:.0f}%): "
          f"**{'PASS' if cost < GOAL_PERCENT else 'MISS'}**. Other work used {busy_before:.0f}% of a core at the start.")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
