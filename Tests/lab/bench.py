"""The benchmarks' lab: a client and a server namespace joined by a veth pair, bulk traffic peers in
each (lab/peer/bulk.py), machine-wide CPU readings, and a way to run a command in the client namespace
without a wrapper process (setns in the benchmark itself, so nothing but the tool is timed).

Everything the lab creates lives inside its two namespaces (addresses, the veth pair, the iptables
rule, sysctls); deleting the namespaces removes it all. Names carry a prefix and the benchmark's pid,
so a later run can also remove what a killed run (SIGKILL) left behind.
"""

import atexit
import os
import re
import signal
import subprocess
import sys
import time

from lab.netns import pid_alive, setns
from lab.traffic import BulkPeer, broadcast

PREFIX = "crbench-"
NAME_RE = re.compile(r"^crbench-(\d+)-(cli|srv)$")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def run(argv, check=True, ns=None, timeout=120):
    """Run a setup command, in namespace `ns` (via `ip netns exec`) when given."""
    if ns is not None:
        argv = ["ip", "netns", "exec", ns] + argv
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def remove_stale_namespaces(prefix=PREFIX):
    """Delete namespaces of earlier benchmark runs whose process is gone (killed with SIGKILL).
    `prefix` names the benchmark family (crbench- by default); only `<prefix><pid>-cli|srv` is touched."""
    listing = run(["ip", "netns", "list"], check=False).stdout
    name_re = NAME_RE if prefix == PREFIX else re.compile(rf"^{re.escape(prefix)}(\d+)-(cli|srv)$")
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        match = name_re.match(name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            log(f"removing stale namespace {name} of a dead benchmark run")
            run(["ip", "netns", "del", name], check=False)


def merge(replies, field="live"):
    total = {}
    for reply in replies:
        for key, count in reply.get(field, {}).items():
            total[key] = total.get(key, 0) + count
    return total


class Lab:
    """Client namespace (10.232.0.1, conntrack on) and server namespace (the server addresses), with
    pools of holder processes: clients are added as connections need room; `servers` processes
    share every listening port through SO_REUSEPORT, which spreads the accepted sockets among them."""

    CLIENT_IP = "10.232.0.1"

    def __init__(self, server_ips, servers, private_server_hash=True, prefix=PREFIX):
        self.private_server_hash = private_server_hash
        self.server_ehash = None
        self.prefix = prefix  # another benchmark family uses its own, so runs never collide
        self.client_ns = f"{prefix}{os.getpid()}-cli"
        self.server_ns = f"{prefix}{os.getpid()}-srv"
        self.server_ips = server_ips
        self.server_count = servers
        self.clients = []
        self.servers = []
        self._host_fd = None
        self._client_fd = None
        self._created = []
        self._closed = False
        atexit.register(self.close)

    # -- lifecycle -------------------------------------------------------------------------
    def open(self):
        remove_stale_namespaces(self.prefix)
        c, s = self.client_ns, self.server_ns
        self._created.append(c)
        run(["ip", "netns", "add", c])
        self._host_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._client_fd = os.open(f"/run/netns/{c}", os.O_RDONLY | os.O_CLOEXEC)
        self._created.append(s)
        if self.private_server_hash:
            # The server ends stand for remote backends: keep them out of the established hash the
            # client's dumps walk. A namespace gets its own TCP hash when its creator's namespace sets
            # net.ipv4.tcp_child_ehash_entries, so the client namespace (sysctl set there, not on the
            # host) creates the server namespace.
            run(["sysctl", "-q", "-w", "net.ipv4.tcp_child_ehash_entries=262144"], ns=c)
            with self.in_client():
                run(["ip", "netns", "add", s])
        else:
            run(["ip", "netns", "add", s])
        # Before 6.1 there is no per-namespace TCP hash and no sysctl naming its size: shared ("-").
        self.server_ehash = (run(["sysctl", "-n", "net.ipv4.tcp_ehash_entries"], ns=s, check=False).stdout.strip()
                             or "-1 (no tcp_ehash_entries before 6.1: the host's hash)")
        # The veth pair is created inside the client namespace and its peer moved straight into the
        # server namespace: the host namespace never sees either end.
        run(["ip", "-n", c, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", s])
        run(["ip", "-n", c, "addr", "add", f"{self.CLIENT_IP}/24", "dev", "veth0"])
        for ip in self.server_ips:
            run(["ip", "-n", s, "addr", "add", f"{ip}/24", "dev", "veth1"])
        for ns, dev in ((c, "veth0"), (s, "veth1")):
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        # Per-namespace sysctls: a wide ephemeral range for the client, deep accept queues for the server.
        run(["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"], ns=c)
        run(["sysctl", "-q", "-w", "net.core.somaxconn=1048576"], ns=s)
        run(["sysctl", "-q", "-w", "net.ipv4.tcp_max_syn_backlog=1048576"], ns=s)
        # Conntrack tracks the client namespace only once a rule uses it.
        run(["iptables", "-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT"], ns=c)
        self.servers = []
        for index in range(self.server_count):
            self.servers.append(BulkPeer(s, "bulk-server", index))
        return self

    def close(self):
        if self._closed:
            return
        self._closed = True
        # A second Ctrl-C must not cut the cleanup short.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            if self._host_fd is not None:
                try:
                    setns(self._host_fd)
                except OSError:
                    pass
            for holder in self.clients + self.servers:
                try:
                    holder.stop(grace=15)
                except Exception as error:  # keep cleaning
                    log(f"stopping {holder.name}: {error}")
            for ns in reversed(self._created):
                if not os.path.exists(f"/run/netns/{ns}"):
                    continue
                result = run(["ip", "netns", "del", ns], check=False)
                if result.returncode != 0:
                    log(f"ip netns del {ns}: {result.stderr.strip()}")
            self._created.clear()
            for fd in (self._client_fd, self._host_fd):
                if fd is not None:
                    os.close(fd)
            self._client_fd = self._host_fd = None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()

    # -- connections -------------------------------------------------------------------------
    def listen(self, ip, port):
        broadcast(self.servers, "listen", ip=ip, port=port)

    def _plan(self, n):
        """Split n new client connections over the client holders, starting new ones as needed."""
        plan = []
        holders = iter(sorted(self.clients, key=lambda h: h.held))
        while n > 0:
            holder = next(holders, None)
            if holder is None:
                holder = BulkPeer(self.client_ns, "bulk-client", len(self.clients))
                self.clients.append(holder)
            room = holder.capacity - holder.held
            if room <= 0:
                continue
            take = min(room, n)
            plan.append((holder, take))
            n -= take
        return plan

    def connect(self, ip, port, n):
        """Open n client connections to ip:port; every server holder accepts meanwhile.
        Returns (connected, accepted, errors)."""
        key = f"{ip}:{port}"
        server_before = sum(h.live.get(key, 0) for h in self.servers)
        plan = self._plan(n)
        asked = time.monotonic()
        for server in self.servers:
            server.send("serve")
        for server in self.servers:
            if server.wait_event("serving", timeout=30, after=asked) is None:
                raise RuntimeError(f"{server.name} did not start serving")
        for holder, count in plan:
            holder.send("connect", dst=ip, port=port, n=count)
        replies = [holder.receive() for holder, _ in plan]
        served = broadcast(self.servers, "stop")
        connected = sum(r["connected"] for r in replies)
        errors = {}
        for r in replies:
            for name, count in r["errors"].items():
                errors[name] = errors.get(name, 0) + count
        if any(r.get("full") for r in served):
            errors["server holder full"] = 1
        deadline = time.monotonic() + 3
        while True:
            accepted = sum(h.live.get(key, 0) for h in self.servers) - server_before
            if accepted >= connected or time.monotonic() > deadline:
                break
            time.sleep(0.05)  # a final ACK still on its way: accept what is queued
            broadcast(self.servers, "drain")
        return connected, accepted, errors

    def reap(self, settle=0.0):
        """Every holder closes the connections that died. Returns (client live, server live) per key."""
        holders = self.clients + self.servers
        for holder in holders:
            holder.send("reap", settle=settle)
        for holder in holders:
            holder.receive()
        return merge([{"live": h.live} for h in self.clients]), merge([{"live": h.live} for h in self.servers])

    def abort(self, key):
        """Close the client connections of one key with RST, then let the servers reap their ends."""
        broadcast(self.clients, "abort", key=key)
        return self.reap()

    # -- running commands in the client namespace ------------------------------------------------
    def in_client(self):
        lab = self

        class _Inside:
            def __enter__(self):
                setns(lab._client_fd)

            def __exit__(self, *exc):
                setns(lab._host_fd)

        return _Inside()

    def client_run(self, argv, timeout=120):
        """Run an untimed command (check, cleanup) in the client namespace."""
        with self.in_client():
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def install_signal_handlers():
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every finally block and atexit hook runs."""

    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    # Also when started in the background by a shell that ignores SIGINT there: an explicit SIGINT cleans up.
    signal.signal(signal.SIGINT, signal.default_int_handler)


# =============================================================================================
# Machine state, shared by the benchmarks


def process_cpu_seconds(pid):
    """utime + stime of every thread of pid, in seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    """Resident set size in MiB; NaN once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def busy_cpu_seconds():
    """Busy CPU time of the whole machine (all cores) from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def remove_stale_workdirs(prefix):
    """Temporary directories of benchmark runs that were killed (SIGKILL) before they could clean up."""
    import shutil
    import tempfile
    root = tempfile.gettempdir()
    for name in os.listdir(root):
        match = re.match(rf"^{re.escape(prefix)}(\d+)-", name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)


def wait_quiet(limit, window=5.0, threshold=0.25):
    """Wait until the machine was nearly idle for `window` seconds, at most `limit` seconds."""
    deadline = time.monotonic() + limit
    while True:
        before = busy_cpu_seconds()
        time.sleep(window)
        busy = (busy_cpu_seconds() - before) / window
        if busy < threshold:
            log(f"machine quiet ({100 * busy:.0f}% of one core busy)")
            return
        if time.monotonic() >= deadline:
            log(f"machine still busy ({100 * busy:.0f}% of one core): starting anyway")
            return
        log(f"waiting for other work to finish ({100 * busy:.0f}% of one core busy)")


def start(script, binary, quiet_limit):
    """What every benchmark does first: prerequisites, signal handlers, optionally a quiet machine.
    Returns the share of one core (percent) other work used in the second before the start."""
    check_prerequisites(script, binary)
    install_signal_handlers()
    if quiet_limit > 0:
        wait_quiet(quiet_limit)
    busy = busy_cpu_seconds()
    time.sleep(1)
    other = 100 * (busy_cpu_seconds() - busy)
    if other > 25:
        log(f"note: other work uses {other:.0f}% of one core: it skews the figures (see --wait-quiet)")
    return other


def check_prerequisites(script, binary, tools=("ip", "ss", "conntrack", "iptables", "sysctl")):
    """Root, the binary under test and the tools a lab needs; exits with a message naming what is missing."""
    import shutil
    if os.geteuid() != 0:
        sys.exit(f"{script} needs root (network namespaces, SOCK_DESTROY, conntrack)")
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary} not found: build it with `swift build -c release` (or `make bench`)")
    for tool in tools:
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (make deps installs it)")

