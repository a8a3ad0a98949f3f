#!/usr/bin/env python3
"""Agent steady state: `conn-reaper run` watching N backends (default 200) probed every second,
all up, nothing to reap. Measures the agent's CPU (utime+stime from /proc over a window, as a share
of one core) and its resident memory, medians over rounds.

Goal: under 40 MB RSS with 200 backends at 1 s. The CPU goal (at most 1.5x HAProxy's for the same
checks, the performance issue's; it replaced an older "under 1% of a core") is probe_bench.py's, which
runs HAProxy beside the agent; here the CPU is shown against a bare C prober.

Anchor: probe_floor.c, compiled here, does only what any TCP prober must (a non-blocking connect, a
poll and an RST close per probe) against the same listeners in the same run. Over loopback the kernel
charges both ends of each handshake to the connecting process, so the floor is mostly kernel time
and the agent's figure is best read as a ratio to it.

Everything runs in one throwaway network namespace: the backends are listeners on 127.0.0.1 inside
it. Needs root. Usage: agent_steady_bench.py [--backends 200] [--rounds 5] [--window 20]"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from lab.traffic import Peer
from lab.bench import rss_mb

HERE = os.path.dirname(os.path.abspath(__file__))

GOAL_RSS_MB = 40.0
FIRST_PORT = 21000

def log(message):
    sys.stderr.write(f"[steady] {message}\n")
    sys.stderr.flush()


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the full line)




def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.environ.get("CONN_REAPER", ".build/release/conn-reaper"))
    parser.add_argument("--backends", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=20.0, help="seconds measured per round")
    parser.add_argument("--warmup", type=float, default=5.0)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("agent_steady_bench: needs root (network namespaces)")
    namespace = f"crsteady-{os.getpid()}"
    ticks_per_second = os.sysconf("SC_CLK_TCK")
    processes, peers = [], []
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        listeners = Peer(namespace)
        peers.append(listeners)
        for port in range(FIRST_PORT, FIRST_PORT + args.backends):
            listeners.listen("tcp", "127.0.0.1", port)
        backends = [f"--backend=127.0.0.1:{FIRST_PORT + i}" for i in range(args.backends)]
        agent = subprocess.Popen(["ip", "netns", "exec", namespace, os.path.abspath(args.binary), "run", *backends,
                                  "--interval", "1s", "--timeout", "500ms", "--listen", "127.0.0.1:9747"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        processes.append(agent)
        log(f"{args.backends} backends, interval 1s; warming up {args.warmup:.0f} s")
        time.sleep(args.warmup)
        floor_binary = os.path.join(tempfile.mkdtemp(prefix="crsteady-"), "probe_floor")
        subprocess.run(["gcc", "-O2", "-o", floor_binary, os.path.join(HERE, "probe_floor.c")], check=True)
        cpu, rss, floor = [], [], []
        for round_number in range(args.rounds):
            before = cpu_ticks(agent.pid)
            started = time.monotonic()
            time.sleep(args.window)
            elapsed = time.monotonic() - started
            cpu.append(100.0 * (cpu_ticks(agent.pid) - before) / ticks_per_second / elapsed)
            rss.append(rss_mb(agent.pid))
            measured = subprocess.run(["ip", "netns", "exec", namespace, floor_binary, str(FIRST_PORT), str(args.backends),
                                       str(int(args.window / 2))], capture_output=True, text=True, check=True)
            floor.append(float(measured.stdout.strip()))
            log(f"round {round_number + 1}: cpu {cpu[-1]:.2f}% of a core, rss {rss[-1]:.1f} MB; floor {floor[-1]:.2f}%")
        status = subprocess.run(["ip", "netns", "exec", namespace, "curl", "-s", "127.0.0.1:9747/status"],
                                capture_output=True, text=True).stdout
        up = status.count('"up"')
        if agent.poll() is not None or up != args.backends:
            sys.exit(f"agent_steady_bench: void run: agent exited={agent.poll()}, backends up={up}/{args.backends}")
        cpu_median, rss_median, floor_median = statistics.median(cpu), statistics.median(rss), statistics.median(floor)
        print(f"\n### Agent steady state: {args.backends} backends probed every 1 s ({args.rounds} rounds of {args.window:.0f} s)\n")
        print("| measure | median | min | max | goal | verdict |")
        print("|---|---|---|---|---|---|")
        print(f"| CPU, % of one core | {cpu_median:.2f} | {min(cpu):.2f} | {max(cpu):.2f} | "
              f"<= 1.5x HAProxy: see probe_bench.py | |")
        print(f"| anchor: bare C prober, % of one core | {floor_median:.2f} | {min(floor):.2f} | {max(floor):.2f} | | "
              f"agent = {cpu_median / floor_median:.1f}x the floor |")
        print(f"| RSS, MB | {rss_median:.1f} | {min(rss):.1f} | {max(rss):.1f} | < {GOAL_RSS_MB:.0f} | "
              f"{'PASS' if rss_median < GOAL_RSS_MB else 'MISS'} |")
    finally:
        for peer in peers:
            peer.stop()
        for process in reversed(processes):
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        subprocess.run(["ip", "netns", "del", namespace], check=False)


if __name__ == "__main__":
    main()
