#!/usr/bin/env python3
"""What probing costs: `conn-reaper run` probing N backends every second next to HAProxy (Debian's
package) doing the same checks, one after the other in alternating rounds of one run, for tcp checks
(connect, RST close) and http checks (HAProxy `option httpchk GET /`); then the agent alone at 50, 200
and 1,000 backends; then the per-probe cost of https probes on a fresh connection and with
`probe.reuse`, from which the fleet table (a DaemonSet on 100, 1,000 and 5,000 nodes, three
apiservers) is derived.

Goals (issue 10): the agent at most 1.5x HAProxy's CPU for the same checks, under 40 MB RSS; CPU
growing linearly or better with the backends.

Lab (Tests/lab): a client namespace (10.240.0.1) where the agent or HAProxy runs, and a server
namespace holding the backends' addresses 10.240.1.1 onwards, joined by a veth pair; one nginx (one
worker) in the server namespace answers every address on 18080 (http) and 18443 (https, a self-signed
certificate). Namespaces are `crprobe-<pid>-*`; everything goes with them. CPU is utime+stime of
every thread from /proc/PID/stat over each window (the kernel's work for a probe's packets is charged
to whoever sends them, so both probers pay for the backends' side of each handshake alike), RSS is
VmRSS at the window's end. Medians over rounds. Needs root, nginx and haproxy (make deps).

Quick run:  PYTHONPATH=Tests python3 Tests/Benchmarks/probe_bench.py --rounds 1 --window 4 --sizes 50,200
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from lab import bench as benchlab
from lab.bench import process_cpu_seconds as cpu_seconds, rss_mb
from lab.agent import Agent, pool_yaml
from lab.bench import log
from lab.netns import Lab, reap_stale_namespaces, stop_child, wait_for

STEM = "crprobe"
CLIENT = "10.240.0.1"
HTTP_PORT, HTTPS_PORT = 18080, 18443
LISTEN = ("127.0.0.1", 18747)          # the agent's endpoints, inside the client namespace
GOAL_RATIO = 1.5
GOAL_RSS_MB = 40.0
FLEET_NODES = (100, 1000, 5000)
APISERVERS = 3

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 16384; use epoll; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    ssl_certificate {dir}/server.crt;
    ssl_certificate_key {dir}/server.key;
    server {{
        listen {http} backlog=8192;
        listen {https} ssl backlog=8192;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""

HAPROXY_CONF = """\
global
    maxconn 4000
    stats socket {dir}/haproxy.sock mode 600 level admin
defaults
    mode tcp
    timeout connect 500ms
    timeout check 500ms
    timeout client 5s
    timeout server 5s
backend probed
{options}    default-server check inter 1s rise 2 fall 2
{servers}
"""


def backend_address(index):
    return f"10.240.{1 + index // 250}.{1 + index % 250}"






class ProbeLab:
    """The two namespaces, the backends' addresses and nginx."""

    def __init__(self, backends, workdir):
        self.lab = Lab(prefix=f"{STEM}-{os.getpid()}-")
        self.workdir = workdir
        self.client = self.lab.namespace("cli")
        self.server = self.lab.namespace("srv")
        self.lab.link(self.client, self.server, [f"{CLIENT}/16"], [])
        batch = "".join(f"addr add {backend_address(i)}/16 dev to-cli\n" for i in range(backends))
        self.server.run(["ip", "-batch", "-"], input=batch)
        # Fresh connections at 1,000 a second leave TIME_WAIT sockets on the side that closes first.
        self.client.run(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"])
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-subj", "/CN=backend", "-days", "1", "-keyout", f"{workdir}/server.key", "-out",
                        f"{workdir}/server.crt"], check=True, capture_output=True, timeout=30)
        with open(f"{workdir}/nginx.conf", "w") as f:
            f.write(NGINX_CONF.format(dir=workdir, http=HTTP_PORT, https=HTTPS_PORT))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = self.server.popen([nginx, "-p", workdir, "-e", f"{workdir}/error.log", "-c", f"{workdir}/nginx.conf"],
                                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.server.run(["ss", "-Hltn", f"sport = :{HTTP_PORT}"]).stdout.strip(), 10, "nginx to listen")

    def nginx_cpu(self):
        """CPU seconds of nginx's master and worker (the backends' side)."""
        total = 0.0
        for pid in self.server.pids():
            try:
                total += cpu_seconds(pid)
            except OSError:
                pass
        return total

    def close(self):
        stop_child(self.nginx)
        self.lab.close()


class AgentProber:
    name = "conn-reaper"

    def __init__(self, lab, binary, kind, backends, reuse=False):
        probe = {"type": kind, "interval": "1s", "timeout": "500ms", "rise": 2, "fall": 2}
        if kind == "https":
            probe["tls"] = "{insecure_skip_verify: true}"
        if reuse:
            probe["reuse"] = True
        port = HTTPS_PORT if kind == "https" else HTTP_PORT
        config = os.path.join(lab.workdir, "agent.yaml")
        with open(config, "w") as f:
            f.write(pool_yaml([{"name": "bench", "backends": [f"{backend_address(i)}:{port}" for i in range(backends)],
                                "early_detection": False, "probe": probe}], listen=LISTEN))
        self.agent = Agent(lab.client, binary, ["--config", config], listen=LISTEN, start_new_session=True)
        self.agent.wait_ready(30)
        self.pid = self.agent.pid
        self.backends = backends

    def all_up(self):
        states = self.agent.backend_states().values()
        return sum(state == "up" for state in states) == self.backends

    def probes(self):
        """Probes done so far (successes and failures)."""
        return self.agent.metrics().value("conn_reaper_probes_total")

    def stop(self):
        self.agent.stop()


class HAProxyProber:
    name = "HAProxy"

    def __init__(self, lab, kind, backends):
        options = "    option httpchk GET /\n    http-check expect status 200\n" if kind == "http" else ""
        servers = "".join(f"    server b{i} {backend_address(i)}:{HTTP_PORT}\n" for i in range(backends))
        config = os.path.join(lab.workdir, "haproxy.cfg")
        with open(config, "w") as f:
            f.write(HAPROXY_CONF.format(dir=lab.workdir, options=options, servers=servers))
        self.socket = os.path.join(lab.workdir, "haproxy.sock")
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.process = lab.client.popen([haproxy, "-db", "-f", config], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.pid = self.process.pid
        self.backends = backends
        wait_for(lambda: os.path.exists(self.socket) or self.process.poll() is not None, 10, "HAProxy's stats socket")
        if self.process.poll() is not None:
            sys.exit(f"haproxy exited {self.process.returncode}: {self.process.stderr.read().decode()}")

    def stat(self):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(self.socket)
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return [line.split(",") for line in data.decode().splitlines() if line and not line.startswith("#")]

    def all_up(self):
        return sum(row[17].startswith("UP") for row in self.stat() if row[1] not in ("FRONTEND", "BACKEND")) == self.backends

    def stop(self):
        stop_child(self.process)
        self.process.stderr.close()


def measure(prober, lab, window):
    """One window: the prober's CPU (% of one core) and RSS (MB), nginx's CPU, and the probes it made
    (the agent's own count; None for HAProxy)."""
    counting = hasattr(prober, "probes")
    probes_before, counted_from = (prober.probes(), time.monotonic()) if counting else (None, None)
    before, nginx_before, started = cpu_seconds(prober.pid), lab.nginx_cpu(), time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - started
    cpu = 100 * (cpu_seconds(prober.pid) - before) / elapsed
    nginx = 100 * (lab.nginx_cpu() - nginx_before) / elapsed
    # The count's own span: reading /metrics of 1,000 backends takes a while on each side.
    probes = (prober.probes() - probes_before) / (time.monotonic() - counted_from) if counting else None
    rss = rss_mb(prober.pid)
    if not prober.all_up():
        raise RuntimeError(f"{prober.name}: not every backend is up after the window: the run is void")
    return {"cpu": cpu, "rss": rss, "nginx": nginx, "probes_per_second": probes}


def run_rounds(lab, makers, rounds, window, warmup):
    """Each prober alone for a window per round, in rotating order; returns {name: [results]}."""
    results = {name: [] for name in makers}
    names = list(makers)
    for index in range(rounds):
        order = names[index % len(names):] + names[:index % len(names)]
        for name in order:
            prober = makers[name]()
            try:
                wait_for(prober.all_up, 15, f"{name}: every backend up")
                time.sleep(warmup)
                result = measure(prober, lab, window)
            finally:
                prober.stop()
            results[name].append(result)
            log(f"  round {index + 1}: {name}: {result['cpu']:.2f}% of a core, {result['rss']:.1f} MB"
                + (f", {result['probes_per_second']:.0f} probes/s" if result["probes_per_second"] else "")
                + f"; nginx {result['nginx']:.2f}%")
    return results


def median(results, key):
    return statistics.median(r[key] for r in results)


def spread(results, key):
    values = [r[key] for r in results]
    return f"{min(values):.2f}-{max(values):.2f}"


def versus_haproxy(lab, binary, kinds, backends, rounds, window, warmup):
    print(f"\n### Probing {backends} backends every 1 s: conn-reaper vs HAProxy ({rounds} rounds of {window:.0f} s each)\n")
    print("| check | conn-reaper CPU, % of a core (median, range) | HAProxy CPU | ratio (goal <= 1.5) | "
          "conn-reaper RSS, MB (goal < 40) | HAProxy RSS, MB | verdict |")
    print("|---|---|---|---|---|---|---|")
    verdicts = []
    for kind in kinds:
        log(f"{kind} checks, {backends} backends")
        results = run_rounds(lab, {
            "conn-reaper": lambda: AgentProber(lab, binary, kind, backends),
            "HAProxy": lambda: HAProxyProber(lab, kind, backends),
        }, rounds, window, warmup)
        agent, haproxy = results["conn-reaper"], results["HAProxy"]
        ratio = median(agent, "cpu") / median(haproxy, "cpu")
        rss = median(agent, "rss")
        ok = ratio <= GOAL_RATIO and rss < GOAL_RSS_MB
        verdicts.append(ok)
        label = "tcp (connect, RST)" if kind == "tcp" else "http (`option httpchk GET /`)"
        print(f"| {label} | {median(agent, 'cpu'):.2f} ({spread(agent, 'cpu')}) | {median(haproxy, 'cpu'):.2f} "
              f"({spread(haproxy, 'cpu')}) | {ratio:.2f}x | {rss:.1f} | {median(haproxy, 'rss'):.1f} | "
              f"{'PASS' if ok else 'MISS'} |")
    return all(verdicts)


def scaling(lab, binary, kind, sizes, rounds, window, warmup):
    print(f"\n### conn-reaper alone, {kind} probes every 1 s ({rounds} rounds of {window:.0f} s per size)\n")
    print("| backends | CPU, % of a core (median) | per 100 backends | RSS, MB |")
    print("|---|---|---|---|")
    per_hundred = []
    for size in sizes:
        log(f"scaling: {size} backends")
        results = run_rounds(lab, {"conn-reaper": lambda: AgentProber(lab, binary, kind, size)}, rounds, window, warmup)
        agent = results["conn-reaper"]
        per_hundred.append(100 * median(agent, "cpu") / size)
        print(f"| {size:,} | {median(agent, 'cpu'):.2f} | {per_hundred[-1]:.2f} | {median(agent, 'rss'):.1f} |")
    # Linear or better: the cost per backend at the largest size is no more than at the smallest
    # (with 15% for noise).
    linear = per_hundred[-1] <= per_hundred[0] * 1.15
    print(f"\n- Growth: {per_hundred[0]:.2f}% per 100 backends at {sizes[0]}, {per_hundred[-1]:.2f}% at {sizes[-1]}: "
          f"**{'linear or better' if linear else 'worse than linear'}**.")
    return linear


def fleet(lab, binary, backends, rounds, window, warmup, reconnect_every):
    """Per-probe cost of https probes, fresh and kept alive, measured; the fleet table derived from it."""
    log(f"https probes, fresh and reused, {backends} backends")
    results = run_rounds(lab, {
        "fresh": lambda: AgentProber(lab, binary, "https", backends),
        "reuse": lambda: AgentProber(lab, binary, "https", backends, reuse=True),
    }, rounds, window, warmup)
    cost = {}
    for mode, rows in results.items():
        probes = median(rows, "probes_per_second")
        # CPU seconds per probe: the agent's, and the backend's (nginx) for answering it.
        cost[mode] = (median(rows, "cpu") / 100 / probes, median(rows, "nginx") / 100 / probes)
    print(f"\n### Fleet: https probes of {APISERVERS} apiservers every 1 s from every node "
          f"(per-probe cost measured here, {rounds} rounds of {window:.0f} s, {backends} backends)\n")
    print("| | agent CPU per probe (measured) | backend CPU per probe (measured, nginx) |")
    print("|---|---|---|")
    for mode in ("fresh", "reuse"):
        print(f"| {mode} | {1e6 * cost[mode][0]:.0f} us | {1e6 * cost[mode][1]:.0f} us |")
    print(f"\nDerived: a node probes {APISERVERS} apiservers once a second; with reuse a connection serves "
          f"{reconnect_every} probes (`reconnect_every`), so 1 in {reconnect_every} probes opens one.\n")
    print("| nodes | TLS handshakes/s per apiserver, fresh | with reuse | apiserver CPU for probes, fresh | with reuse "
          "| agent CPU per node, fresh | with reuse |")
    print("|---|---|---|---|---|---|---|")
    for nodes in FLEET_NODES:
        fresh_handshakes, reuse_handshakes = nodes, nodes / reconnect_every
        print(f"| {nodes:,} | {fresh_handshakes:,.0f} | {reuse_handshakes:,.0f} | "
              f"{100 * nodes * cost['fresh'][1]:.0f}% of a core | {100 * nodes * cost['reuse'][1]:.0f}% of a core | "
              f"{100 * APISERVERS * cost['fresh'][0]:.3f}% | {100 * APISERVERS * cost['reuse'][0]:.3f}% |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=os.environ.get("CONN_REAPER", ".build/release/conn-reaper"))
    parser.add_argument("--backends", type=int, default=200)
    parser.add_argument("--sizes", default="50,200,1000", help="backends of the scaling table")
    parser.add_argument("--kinds", default="tcp,http")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--reconnect-every", type=int, default=10, help="the agent's default, for the fleet table")
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: versus, scaling, fleet")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args()
    busy = benchlab.start("probe_bench.py", args.binary, args.wait_quiet)
    for tool in ("nginx", "haproxy", "openssl"):
        if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is missing (make deps installs it)")
    sizes = [int(size) for size in args.sizes.split(",")]
    skip = set(filter(None, args.skip.split(",")))
    reap_stale_namespaces(STEM)
    benchlab.remove_stale_workdirs(f"{STEM}-")
    workdir = tempfile.mkdtemp(prefix=f"{STEM}-{os.getpid()}-")
    os.chmod(workdir, 0o755)
    # A copy: a rebuild in the tree during the run must not change what is measured.
    binary = shutil.copy(args.binary, os.path.join(workdir, "conn-reaper"))
    load = os.getloadavg()[0]
    lab = None
    try:
        lab = ProbeLab(max([args.backends, *sizes]), workdir)
        print(f"\nMachine: {os.cpu_count()} cores, load average {load:.2f} at the start, other work "
              f"{busy:.0f}% of a core; HAProxy {subprocess.run(['haproxy', '-v'], capture_output=True, text=True).stdout.split()[2]}")
        ok = True
        if "versus" not in skip:
            ok &= versus_haproxy(lab, binary, args.kinds.split(","), args.backends, args.rounds, args.window, args.warmup)
        if "scaling" not in skip:
            ok &= scaling(lab, binary, "tcp", sizes, args.rounds, args.window, args.warmup)
        if "fleet" not in skip:
            fleet(lab, binary, args.backends, args.rounds, args.window, args.warmup, args.reconnect_every)
        print(f"\nLoad average at the end: {os.getloadavg()[0]:.2f}")
    finally:
        if lab is not None:
            lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
