#!/usr/bin/env python3
"""What the heartbeat (`heartbeat: true`) costs: `conn-reaper run` with one pool of N backends (default
50, 200 and 1,000) probed every second, all up, once with the heartbeat off and once on, alternating.
Per N: the agent's CPU (utime+stime from /proc over --window, share of one core, median of --rounds) and
the packets a backend receives per second (an iptables counter on the backends' ports: probe SYNs and
RSTs, and with the heartbeat its keepalive probes). The heartbeat's own cost is the difference. The
fleet line multiplies one backend's extra packets by 5,000 nodes: what one apiserver receives when
every node's agent keeps a heartbeat to it.

The kernel sends the keepalive probes: the agent wakes only when a heartbeat ends, so its CPU should
barely move; the packets are the price. Everything runs in one throwaway network namespace (backends
listen on 127.0.0.1 inside it; over loopback the kernel charges both ends' work to the sender).
Needs root and a release build. Usage: heartbeat_bench.py [--sizes 50,200,1000] [--rounds 3] [--window 10]"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from lab.agent import pool_yaml
from lab.bench import log, process_cpu_seconds, rss_mb
from lab.traffic import Peer

FIRST_PORT = 23000
LISTEN_PORT = 9748
NODES = 5000


def in_namespace(namespace, *argv, **options):
    return subprocess.run(["ip", "netns", "exec", namespace, *argv], **options)


def metric_sum(namespace, name):
    body = in_namespace(namespace, "curl", "-s", f"127.0.0.1:{LISTEN_PORT}/metrics", capture_output=True, text=True).stdout
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name + "{"))


def backend_packets(namespace):
    """Packets the backends' ports received since the counter was zeroed."""
    out = in_namespace(namespace, "iptables", "-w", "-L", "INPUT", "-v", "-x", "-n", "-Z",
                       capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if "dpts:" in line:
            return int(line.split()[0])
    raise RuntimeError(f"no counter rule in {out}")


def measure(namespace, binary, workdir, size, heartbeat, args):
    backends = [f"127.0.0.1:{FIRST_PORT + i}" for i in range(size)]
    config = os.path.join(workdir, f"agent-{size}-{heartbeat}.yaml")
    with open(config, "w") as handle:
        handle.write(pool_yaml([{"name": "api", "backends": backends, "heartbeat": heartbeat,
                                 "probe": {"type": "tcp", "interval": "1s", "timeout": "500ms", "rise": 1, "fall": 3}}],
                               listen=("127.0.0.1", LISTEN_PORT), log_level="warning"))
    agent = subprocess.Popen(["ip", "netns", "exec", namespace, binary, "run", "--config", config],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            time.sleep(1)
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited with {agent.returncode}")
            try:
                up = metric_sum(namespace, "conn_reaper_backend_up")
                beating = metric_sum(namespace, "conn_reaper_heartbeat_up")
            except (ValueError, IndexError):
                continue
            if up == size and beating == (size if heartbeat else 0):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after 30 s: {up:g} up, {beating:g} heartbeats of {size}")
        time.sleep(args.warmup)
        cpu, packets = [], []
        for _ in range(args.rounds):
            backend_packets(namespace)
            before, started = process_cpu_seconds(agent.pid), time.monotonic()
            time.sleep(args.window)
            elapsed = time.monotonic() - started
            cpu.append(100.0 * (process_cpu_seconds(agent.pid) - before) / elapsed)
            packets.append(backend_packets(namespace) / elapsed / size)
        failures = metric_sum(namespace, "conn_reaper_heartbeat_failures_total")
        result = {"cpu": statistics.median(cpu), "cpu_range": (min(cpu), max(cpu)), "packets": statistics.median(packets),
                  "rss": rss_mb(agent.pid), "failures": failures}
        log(f"heartbeat: {size} backends, heartbeat {'on' if heartbeat else 'off'}: cpu {result['cpu']:.2f}% "
            f"({min(cpu):.2f}-{max(cpu):.2f}), {result['packets']:.2f} packets/s a backend, rss {result['rss']:.1f} MB, "
            f"heartbeat failures {failures:g}")
        return result
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default=os.environ.get("CONN_REAPER", ".build/release/conn-reaper"))
    parser.add_argument("--sizes", default="50,200,1000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured per round")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after every heartbeat is up")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("heartbeat_bench: needs root (network namespaces)")
    sizes = [int(s) for s in args.sizes.split(",")]
    binary = os.path.abspath(args.binary)
    namespace = f"crhb-{os.getpid()}"
    workdir = tempfile.mkdtemp(prefix="crhb-")
    os.environ["CONN_REAPER_RUNTIME_DIRECTORY"] = os.path.join(workdir, "run")
    peers = []
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run(["ip", "-n", namespace, "link", "set", "lo", "up"], check=True)
        in_namespace(namespace, "iptables", "-w", "-A", "INPUT", "-p", "tcp", "-d", "127.0.0.1",
                     "--dport", f"{FIRST_PORT}:{FIRST_PORT + max(sizes) - 1}", check=True)
        listeners = Peer(namespace)
        peers.append(listeners)
        for port in range(FIRST_PORT, FIRST_PORT + max(sizes)):
            listeners.listen("tcp", "127.0.0.1", port)
        rows = []
        for size in sizes:
            off = measure(namespace, binary, workdir, size, False, args)
            on = measure(namespace, binary, workdir, size, True, args)
            rows.append((size, off, on))
        print(f"\n### Heartbeat cost: one pool, tcp probes every 1 s, all up ({args.rounds} windows of {args.window:g} s, medians)\n")
        print("| backends | agent CPU % off | agent CPU % on | heartbeat's CPU | packets/s a backend receives, off | on | "
              f"heartbeat's packets/s a backend | at one backend from {NODES:,} nodes | heartbeat failures |")
        print("|---|---|---|---|---|---|---|---|---|")
        for size, off, on in rows:
            extra = on["packets"] - off["packets"]
            print(f"| {size:,} | {off['cpu']:.2f} | {on['cpu']:.2f} | {on['cpu'] - off['cpu']:+.2f} | {off['packets']:.2f} | "
                  f"{on['packets']:.2f} | {extra:+.2f} | {extra * NODES:,.0f}/s | {on['failures']:g} |")
        print(f"\nA backend's own kernel answers each keepalive probe with an ACK: the same count again on the "
              f"way back. Probes alone (off) are a SYN and an RST a second per backend.")
    finally:
        for peer in peers:
            peer.stop()
        subprocess.run(["ip", "netns", "del", namespace], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
