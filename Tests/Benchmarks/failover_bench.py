#!/usr/bin/env python3
"""Failover latency: nginx + conn-reaper vs HAProxy's own reaping vs nginx alone (`make bench`, root).

The seed incident of Tests/lab/incident.py, measured: a client keeps N long-lived L4
streams open through a balancer to three streaming upstreams and reconnects as soon as a stream ends;
one upstream's own veth end is set down (it can send nothing: no FIN, no RST). A stream's failover
latency is the time from the cut to the first line it receives from a live upstream afterwards. Only
streams that were on the cut upstream at the cut are measured.

Configurations (the same L4 workload; each round builds a fresh lab and removes it):

- ``nginx + conn-reaper``: kubespray's nginx ``stream`` balancer (least_conn, proxy_timeout 10m,
  proxy_connect_timeout 1s) and ``conn-reaper run --backend ... --probe tcp --interval 200ms
  --timeout 150ms --rise 2 --fall 2`` in nginx's namespace.
- ``HAProxy``: Debian's haproxy in nginx's place, ``mode tcp``, ``balance leastconn``, ``server ... check
  inter 200ms fall 2 rise 2 on-marked-down shutdown-sessions``, ``timeout connect 1s``,
  ``timeout client/server 10m``: its TCP-connect health check against conn-reaper's tcp probe.
- ``nginx alone``: nothing closes the stalled streams before proxy_timeout (10 m), so the round ends
  at a short deadline (``--alone-deadline``, 10 s) and the streams still stalled are counted.

Configurations rotate within each round (so slow phases of a noisy machine hit all of them), and the
cut upstream rotates over up1..up3. The cut is an SIOCSIFFLAGS ioctl from a thread of this process
that entered the upstream's namespace, timed with CLOCK_MONOTONIC right before it; the client records
line arrivals with the same clock. p50/p95/max pool every measured stream of every round; a stream
still stalled at its round's deadline counts as "> deadline" (so a p95 can be "> 15 s").

Output: progress on stderr; on stdout a Markdown table (configuration, rounds, streams measured,
p50, p95, max, stalled at the deadline, p50 ratio vs HAProxy), a goal line (PASS when nginx +
conn-reaper's p50 and p95 are at or below HAProxy's) and a breakdown of where the time goes.

Namespaces are named ``crfo-<pid>-<n>-<role>``; everything (processes, namespaces, their iptables
rules, the temp dirs) is removed at the end, on an exception, on Ctrl-C, SIGTERM or SIGHUP; a later
run removes namespaces left by a run killed with SIGKILL. Nothing is added to the host namespace.

    PYTHONPATH=Tests CONN_REAPER=$PWD/.build/release/conn-reaper python3 Tests/Benchmarks/failover_bench.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import math
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

from lab import netns
from lab.agent import AGENT_LISTEN
from lab.analysis import IncidentRun, Stream
from lab.incident import L4_PORT, NGINX_ADDR, UPSTREAM_NAMES, IncidentLab, upstream_address
from lab.netns import can_connect, in_netns, wait_for

STEM = "crfo"
PROBE_FLAGS = ["--probe", "tcp", "--interval", "200ms", "--timeout", "150ms", "--rise", "2", "--fall", "2"]
AGENT = "nginx + conn-reaper"
HAPROXY = "HAProxy shutdown-sessions"
ALONE = "nginx alone"
CONFIGS = (AGENT, HAPROXY, ALONE)

HAPROXY_CFG = """\
# Debian's haproxy in nginx's place: L4, leastconn, TCP-connect checks at conn-reaper's interval/fall;
# a server marked down has its sessions shut (on-marked-down shutdown-sessions).
global
    maxconn 4096

defaults
    mode tcp
    timeout connect 1s
    timeout client 10m
    timeout server 10m

frontend apiserver
    bind {nginx}:{l4}
    default_backend kube_apiserver

backend kube_apiserver
    balance leastconn
{servers}
"""

HAPROXY_DOWN = re.compile(r"Server \S+/(\S+) is DOWN")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# =============================================================================================
# The HAProxy lab: lab.incident's topology with haproxy where nginx was


class HAProxyLab(IncidentLab):
    """IncidentLab with HAProxy (mode tcp) listening on nginx's L4 address instead of nginx. Its
    stderr (server state changes) is read line by line with arrival times."""

    def start_nginx(self) -> None:
        servers = "\n".join(
            f"    server {name} {upstream_address(index)}:{L4_PORT} check inter 200ms fall 2 rise 2 "
            f"on-marked-down shutdown-sessions" for index, name in enumerate(UPSTREAM_NAMES, start=1))
        conf = self.write_file("haproxy.cfg", HAPROXY_CFG.format(nginx=NGINX_ADDR, l4=L4_PORT, servers=servers))
        binary = netns.tool("haproxy")
        if binary is None:
            raise RuntimeError("haproxy not found (apt-get install haproxy)")
        check = subprocess.run([binary, "-c", "-q", "-f", conf], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c: {check.stderr or check.stdout}")
        self.haproxy_lines: list[tuple[float, str]] = []
        # -db: foreground, no daemon; SIGTERM (IncidentLab.close) stops it.
        self.nginx = self.nginx_ns.popen([binary, "-db", "-f", conf], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = self.nginx.stderr

        def read() -> None:
            try:
                for raw in iter(stderr.readline, b""):
                    self.haproxy_lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))
            except (OSError, ValueError):
                pass        # the pipe was closed under us at teardown
        threading.Thread(target=read, name="haproxy-stderr", daemon=True).start()

        def up() -> bool:
            if self.nginx.poll() is not None:
                raise RuntimeError(f"haproxy exited {self.nginx.returncode}: "
                                   + "\n".join(text for _, text in self.haproxy_lines[-20:]))
            return in_netns(self.nginx_ns.name, can_connect, NGINX_ADDR, L4_PORT, 0.5)
        wait_for(up, 10, "haproxy to listen")

    def down_times(self, name: str) -> list[float]:
        return [t for t, text in list(self.haproxy_lines) if (m := HAPROXY_DOWN.search(text)) and m.group(1) == name]


# =============================================================================================
# A precise cut


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def _link_down(dev: str) -> tuple[float, float]:
    """Clears IFF_UP on ``dev`` of the calling thread's namespace; monotonic times around the ioctl."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        name = dev.encode()
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16sh22x", name, 0)))[1]
        request = struct.pack("16sh22x", name, flags & ~IFF_UP)
        before = time.monotonic()
        fcntl.ioctl(sock, SIOCSIFFLAGS, request)
        return before, time.monotonic()


def cut(incident: IncidentLab, name: str) -> tuple[float, float]:
    """Like IncidentLab.cut (the upstream's own veth end down), without an `ip` process in the timing."""
    before, after = in_netns(incident.upstream_ns[name].name, _link_down, "to-ngx")
    state = incident.upstream_ns[name].ip("-o", "link", "show", "to-ngx").stdout
    if re.search(r"[<,]UP[,>]", state):
        raise RuntimeError(f"the cut did not take: {state}")
    return before, after


def host_tcp_sockets() -> int:
    """TCP sockets allocated on the whole machine (/proc/net/sockstat's "alloc" counts every namespace):
    sock_diag and conntrack dumps walk tables shared by all namespaces, so other work's sockets cost
    the agent time."""
    try:
        with open("/proc/net/sockstat") as sockstat:
            for line in sockstat:
                if line.startswith("TCP:"):
                    fields = line.split()
                    return int(fields[fields.index("alloc") + 1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


# =============================================================================================
# One round


@dataclasses.dataclass
class StreamResult:
    latency: float | None          # cut -> first line from a live upstream; None: stalled at the deadline
    eof: float | None              # cut -> the client saw its connection end
    reconnect: float | None        # that end -> first line from a live upstream
    attempts: int                  # client connections started after the cut up to the first live line


@dataclasses.dataclass
class RoundResult:
    config: str
    dead: str
    streams: int
    deadline: float
    results: list[StreamResult]
    detect: float | None           # cut -> the balancer/agent declared the upstream down (log line read)
    reap_sockets: list[tuple[float, int, str]]   # agent: (s after cut, sockets, reason) of reap lines
    notes: list[str]
    reap_ms: float | None = None   # agent: duration_ms of the reason=down reap (its own measurement)
    aborted_connects: int = 0      # nginx: connects to the dead upstream ended by ECONNABORTED (a reap)
    host_sockets: int = 0          # TCP sockets allocated on the whole machine (all namespaces) at the cut


def stream_result(stream: Stream, t_cut: float, dead: str) -> StreamResult:
    first = stream.first_after(t_cut, exclude=dead)
    # The connection that carried the dead upstream's last line before the cut.
    carrying = None
    for connection in stream.connections:
        if any(t <= t_cut and b == dead for t, b in connection["data"]):
            carrying = connection
    eof = carrying["end"] - t_cut if carrying and carrying["end"] is not None else None
    reconnect = (first - carrying["end"]) if first is not None and carrying and carrying["end"] is not None else None
    attempts = sum(1 for c in stream.connections if c["start"] > t_cut and (first is None or c["start"] <= first))
    return StreamResult(None if first is None else first - t_cut, eof, reconnect, attempts)


def run_round(config: str, dead: str, binary: str, prefix: str, streams: int, deadline: float) -> RoundResult:
    lab_class = HAProxyLab if config == HAPROXY else IncidentLab
    with netns.Lab(prefix) as lab:
        incident = lab_class.build(lab)
        try:
            agent = None
            if config == AGENT:
                args = [a for b in incident.all_backends("l4") for a in ("--backend", b)]
                agent = incident.start_agent(binary, [*args, *PROBE_FLAGS, "--listen", "%s:%d" % AGENT_LISTEN])
                agent.wait_ready()
                agent.wait_states({f"default/{b}": "up" for b in incident.all_backends("l4")})
            client = incident.start_client(l4=streams)
            incident.wait_flowing(client, timeout=15)
            time.sleep(random.uniform(0.5, 1.0))        # a random phase against the probes
            incident.wait_flowing(client)
            status = client.status()
            on_dead = [i for i, s in enumerate(status["streams"]) if s["backend"] == dead]
            host_sockets = host_tcp_sockets()
            t_cut, t_cut_done = cut(incident, dead)
            # Poll until every stream that was on the dead upstream got a line from a live one, or the deadline.
            while time.monotonic() < t_cut + deadline:
                time.sleep(0.1)
                now_status = client.status()
                now = now_status["now"]
                if all(now_status["streams"][i]["backend"] not in (dead, None)
                       and now_status["streams"][i]["age"] < now - t_cut for i in on_dead):
                    time.sleep(0.2)
                    break
            t_end = time.monotonic()
            dump = client.dump()
            run = IncidentRun(dead, t_cut, t_cut_done, t_end, dump, {}, [], agent is not None)
            case = run.case("l4")
            results = [stream_result(s, t_cut, dead) for s in case.on_dead]
            # A stream that recovered only after the deadline (we polled a little past it) is stalled.
            for r in results:
                if r.latency is not None and r.latency > deadline:
                    r.latency = None
            detect, reaps, notes, reap_ms = None, [], [], None
            if agent is not None:
                backend = incident.backend(dead)
                downs = agent.find("backend dead", backend=backend)
                detect = downs[0].t - t_cut if downs else None
                lines = agent.reaps(backend)
                reaps = [(line.t - t_cut, int(line.fields.get("sockets", "0")), line.fields.get("reason", ""))
                         for line in lines]
                down_reaps = [line for line in lines if line.fields.get("reason") == "dead"]
                if down_reaps:
                    reap_ms = float(down_reaps[0].fields.get("duration_ms", "nan"))
                errors = [line.text for line in agent.log() if "level=error" in line.text or "level=warning" in line.text]
                notes += errors[:3]
                if not agent.running():
                    notes.append(f"conn-reaper exited {agent.process.returncode}")
            elif config == HAPROXY:
                downs = incident.down_times(dead)
                detect = downs[0] - t_cut if downs else None
            if len(case.on_dead) != len(on_dead):
                notes.append(f"on the dead upstream: {len(on_dead)} by status, {len(case.on_dead)} by dump")
            aborted = 0
            if config != HAPROXY:
                aborted = sum(1 for line in incident.nginx_error_log(1_000_000).splitlines()
                              if "(103: Software caused connection abort) while connecting to upstream" in line)
            return RoundResult(config, dead, len(case.on_dead), deadline, results, detect, reaps, notes,
                               reap_ms, aborted, host_sockets)
        finally:
            incident.close()


# =============================================================================================
# Statistics and output


def pct(values: list[float], fraction: float) -> float:
    """Percentile with linear interpolation; ``inf`` stands for a stalled stream (sorted last)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = fraction * (len(ordered) - 1)
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    if math.isinf(ordered[high]):
        return ordered[high] if position > low else ordered[low]
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def fmt(seconds: float | None, deadline: float) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "n/a"
    if math.isinf(seconds):
        return f"> {deadline:g} s"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return pct(values, 0.5) if values else None


def latencies(rounds: list[RoundResult]) -> list[float]:
    return [r.latency if r.latency is not None else math.inf for rr in rounds for r in rr.results]


def report(by_config: dict[str, list[RoundResult]], args, meta: list[str]) -> str:
    out = [*meta, ""]
    hap = latencies(by_config.get(HAPROXY, []))
    hap_p50 = pct(hap, 0.5) if hap else float("nan")
    out.append("| configuration | rounds | streams measured | p50 | p95 | max | stalled at deadline | p50 vs HAProxy |")
    out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    summary = {}
    for config in CONFIGS:
        rounds = by_config.get(config, [])
        if not rounds:
            continue
        values = latencies(rounds)
        deadline = max(r.deadline for r in rounds)
        p50, p95, worst = pct(values, 0.5), pct(values, 0.95), max(values) if values else float("nan")
        stalled = sum(1 for v in values if math.isinf(v))
        summary[config] = (p50, p95)
        if config == HAPROXY:
            ratio = "1.00x"
        elif math.isnan(hap_p50) or math.isinf(hap_p50) or not values:
            ratio = "n/a"
        elif math.isinf(p50):
            ratio = f"> {deadline / hap_p50:.0f}x"
        else:
            ratio = f"{p50 / hap_p50:.2f}x"
        stalled_text = f"{stalled} (> {deadline:g} s)" if stalled else "0"
        out.append(f"| {config} | {len(rounds)} | {len(values)} | {fmt(p50, deadline)} | {fmt(p95, deadline)} | "
                   f"{fmt(worst, deadline)} | {stalled_text} | {ratio} |")
    out.append("")
    if AGENT in summary and HAPROXY in summary:
        (a50, a95), (h50, h95) = summary[AGENT], summary[HAPROXY]
        verdict = "PASS" if a50 <= h50 and a95 <= h95 else "MISS"
        out.append(f"Goal (nginx + conn-reaper p50 and p95 <= HAProxy's): **{verdict}** "
                   f"(p50 {fmt(a50, args.deadline)} vs {fmt(h50, args.deadline)}, "
                   f"p95 {fmt(a95, args.deadline)} vs {fmt(h95, args.deadline)})")
    else:
        out.append("Goal (nginx + conn-reaper p50 and p95 <= HAProxy's): not measured")
    out.append("")
    out.append("Where the time goes (medians over the measured streams; detection: one value per round):")
    out.append("")
    out.append("| configuration | cut -> marked down | cut -> client sees EOF | EOF -> first live line "
               "| streams needing > 1 reconnect |")
    out.append("| --- | ---: | ---: | ---: | ---: |")
    for config in CONFIGS:
        rounds = by_config.get(config, [])
        if not rounds:
            continue
        deadline = max(r.deadline for r in rounds)
        results = [r for rr in rounds for r in rr.results]
        detect = median([rr.detect for rr in rounds]) if config != ALONE else None
        eofs = [r.eof for r in results]
        eof = median(eofs) if any(e is not None for e in eofs) else None
        eof_text = fmt(eof, deadline) if eof is not None else f"> {deadline:g} s (none)"
        multi = sum(1 for r in results if r.attempts > 1)
        out.append(f"| {config} | {fmt(detect, deadline) if config != ALONE else 'never'} | {eof_text} | "
                   f"{fmt(median([r.reconnect for r in results]), deadline)} | {multi} of {len(results)} |")
    out.append("")
    agent_rounds = by_config.get(AGENT, [])
    if agent_rounds:
        reap_ms = median([rr.reap_ms for rr in agent_rounds])
        gaps = []       # down reap -> the next reap that ended something (nginx's new SYN_SENT sockets)
        for rr in agent_rounds:
            down = [t for t, _, reason in rr.reap_sockets if reason == "dead"]
            later = [t for t, n, reason in rr.reap_sockets if reason != "dead" and n > 0 and down and t > down[0]]
            if down and later:
                gaps.append(later[0] - down[0])
        aborted = sum(rr.aborted_connects for rr in agent_rounds)
        measured = sum(len(rr.results) for rr in agent_rounds)
        out.append(f"- conn-reaper: the reason=down reap took {reap_ms:.0f} ms (median of its duration_ms); "
                   f"the next reap that ended sockets came {fmt(median(gaps), 0)} later (median); nginx sent {aborted} reconnects of {measured} measured streams to "
                   f"the dead upstream first (least_conn: it had no connections left), each stuck in SYN_SENT "
                   f"until that still-dead reap aborted it (nginx then marks it failed and picks a live one)."
                   if reap_ms is not None else "- conn-reaper: no reap line seen.")
    all_rounds = [rr for rounds in by_config.values() for rr in rounds]
    if all_rounds:
        counts = [rr.host_sockets for rr in all_rounds]
        out.append(f"- Machine: {min(counts)}-{max(counts)} TCP sockets allocated across all namespaces at the "
                   f"cuts (the agent's sock_diag and conntrack dumps walk tables shared by all namespaces).")
    return "\n".join(out)


def describe_round(rr: RoundResult) -> str:
    stalled = sum(1 for r in rr.results if r.latency is None)
    all_values = [r.latency if r.latency is not None else math.inf for r in rr.results]
    text = (f"{rr.config}: {rr.streams} streams on {rr.dead}, "
            f"p50 {fmt(pct(all_values, 0.5), rr.deadline)} max {fmt(max(all_values, default=None), rr.deadline)}, "
            f"stalled {stalled}")
    if rr.detect is not None:
        text += f", marked down at +{rr.detect * 1000:.0f} ms"
    if rr.reap_sockets:
        text += ", reaps " + " ".join(f"+{t * 1000:.0f}ms:{n}({reason})" for t, n, reason in rr.reap_sockets[:6])
    if rr.reap_ms is not None:
        text += f", down reap took {rr.reap_ms:.0f} ms"
    if rr.config != HAPROXY:
        text += f", nginx connects to {rr.dead} aborted {rr.aborted_connects}"
    text += f", host TCP sockets {rr.host_sockets}"
    for note in rr.notes:
        text += f"\n    note: {note}"
    return text


# =============================================================================================
# Main


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds per configuration (default 5)")
    parser.add_argument("--streams", type=int, default=30, help="L4 streams per round over 3 upstreams (default 30)")
    parser.add_argument("--deadline", type=float, default=15.0,
                        help="seconds after the cut a round of nginx + conn-reaper or HAProxy waits at most (default 15)")
    parser.add_argument("--alone-deadline", type=float, default=10.0,
                        help="the same for nginx alone, which never recovers before proxy_timeout (default 10)")
    parser.add_argument("--configs", default=",".join(["agent", "haproxy", "alone"]),
                        help="comma-separated subset of agent,haproxy,alone (default all)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (the cut's phase)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each round, wait up to SECONDS until fewer than --quiet-sockets TCP sockets "
                             "exist on the machine (other work's sockets slow the agent's dumps); default 0: no wait")
    parser.add_argument("--quiet-sockets", type=int, default=10_000,
                        help="the socket count --wait-quiet waits for (default 10000)")
    args = parser.parse_args(argv)
    keys = {"agent": AGENT, "haproxy": HAPROXY, "alone": ALONE}
    try:
        configs = [keys[k.strip()] for k in args.configs.split(",") if k.strip()]
    except KeyError as error:
        parser.error(f"unknown configuration {error}")
    if os.geteuid() != 0:
        print("failover_bench.py needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.seed is not None:
        random.seed(args.seed)
    source = os.environ.get("CONN_REAPER") or str(REPO / ".build" / "release" / "conn-reaper")
    if AGENT in configs and not os.access(source, os.X_OK):
        print(f"conn-reaper binary not found at {source} (set CONN_REAPER or run swift build -c release)", file=sys.stderr)
        return 2

    # SIGINT too, explicitly: a shell starts background jobs with SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    prefix = netns.default_prefix(STEM)
    bindir = None
    by_config: dict[str, list[RoundResult]] = {c: [] for c in configs}
    status = 0
    try:
        stale = netns.reap_stale_namespaces(STEM)
        if stale:
            log(f"removed {len(stale)} namespaces of a dead earlier run: {' '.join(stale)}")
        # A private copy: a relink of the tree during the run cannot change what is measured.
        bindir = tempfile.mkdtemp(prefix=f"{STEM}-bin-{os.getpid()}-")
        os.chmod(bindir, 0o755)
        binary = os.path.join(bindir, "conn-reaper")
        meta = [f"Failover latency, L4 streams: {args.streams} streams over 3 upstreams per round, one upstream's "
                f"link cut (set down) per round, probes/checks every 200 ms, fall 2."]
        if AGENT in configs:
            shutil.copy2(source, binary)
            version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
            built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.stat(source).st_mtime))
            log(f"conn-reaper {version} (copied from {source}, modified {built})")
            meta.append(f"conn-reaper {version} ({source}, modified {built}); `run {' '.join(PROBE_FLAGS)}`.")
        haproxy = netns.tool("haproxy")
        if HAPROXY in configs:
            line = subprocess.run([haproxy or "haproxy", "-v"], capture_output=True, text=True).stdout.splitlines()
            log(line[0] if line else "haproxy: version unknown")
            meta.append((line[0].split(" - ")[0] if line else "HAProxy") + "; nginx "
                        + subprocess.run([netns.tool("nginx") or "nginx", "-v"], capture_output=True,
                                         text=True).stderr.strip().split("/")[-1] + ".")
        log(f"{args.rounds} rounds x {len(configs)} configurations, {args.streams} streams each; deadlines "
            f"{args.deadline:g} s (nginx alone {args.alone_deadline:g} s); namespaces {prefix}*")
        started = time.monotonic()
        for round_index in range(args.rounds):
            dead = UPSTREAM_NAMES[round_index % len(UPSTREAM_NAMES)]
            order = configs[round_index % len(configs):] + configs[:round_index % len(configs)]
            for config in order:
                deadline = args.alone_deadline if config == ALONE else args.deadline
                if args.wait_quiet > 0 and host_tcp_sockets() >= args.quiet_sockets:
                    log(f"{host_tcp_sockets()} TCP sockets on the machine: waiting up to {args.wait_quiet:g} s "
                        f"for fewer than {args.quiet_sockets}")
                    until = time.monotonic() + args.wait_quiet
                    while time.monotonic() < until and host_tcp_sockets() >= args.quiet_sockets:
                        time.sleep(1)
                for attempt in range(2):
                    try:
                        rr = run_round(config, dead, binary, prefix, args.streams, deadline)
                        break
                    except (AssertionError, RuntimeError, netns.LabError) as error:
                        # A lab that did not come up (e.g. a starved machine) is retried once; the
                        # measurement itself never is.
                        log(f"round {round_index + 1} {config}: setup failed ({str(error).splitlines()[0][:200]})"
                            + ("; retrying" if attempt == 0 else ""))
                        if attempt == 1:
                            raise
                by_config[config].append(rr)
                log(f"round {round_index + 1}/{args.rounds} {describe_round(rr)}")
        log(f"done in {time.monotonic() - started:.0f} s")
        print(report(by_config, args, meta))
        sys.stdout.flush()
    except KeyboardInterrupt as error:
        log(f"interrupted ({error or 'Ctrl-C'}): cleaning up")
        status = 130
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)       # let the cleanup finish
        try:
            left = netns.cleanup_namespaces(prefix)
            if left:
                log(f"removed leftover namespaces: {' '.join(left)}")
        finally:
            if bindir:
                shutil.rmtree(bindir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
