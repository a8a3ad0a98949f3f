"""Throwaway network namespaces for kernel tests, benchmarks and end-to-end runs.

Everything happens inside namespaces this module creates: the host namespace's addresses, routes
and firewall are never touched. Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2.

Typical use::

    from lab.netns import Lab

    with Lab() as lab:                                   # namespaces named crt-<pid>-<n>-<role>
        client, server = lab.namespace("cli"), lab.namespace("srv")
        lab.link(client, server, ["10.231.0.1/24", "fd00:231::1/64"],
                                 ["10.231.0.2/24", "fd00:231::2/64"])
        client.enable_conntrack()                         # make conntrack track this namespace
        srv = server.peer()                               # the traffic peer's sockets role
        srv.listen("tcp", "::", 8080)                     # dual-stack echo server
        cli = client.peer()
        ids = cli.connect("10.231.0.2", 8080, count=3)
        assert cli.probe(ids) == ["ok"] * 3
        client.run(["ss", "-tn"])                         # any command, inside the namespace
    # leaving the block stops every process started through the lab and deletes its namespaces

Cleanup is layered: ``Lab.close()`` (also on exceptions via ``with``), then
``cleanup_namespaces(prefix)`` for anything a crashed run left (a pytest session calls it at the
end), and ``reap_stale_namespaces()`` for namespaces of runs whose process is gone.

Main API:

- ``Lab(prefix=None)``: ``namespace(role)``, ``link(a, b, addrs_a, addrs_b)``, ``remove(namespace)``, ``close()``.
- ``Namespace``: ``run(argv)``, ``popen(argv)``, ``ip(...)``, ``iptables(...)``/``ip6tables(...)``,
  ``add_route(...)``, ``enable_conntrack()``, ``dnat(...)``, ``conntrack_flows(...)``, ``peer()``,
  ``pids()``.
- ``in_netns(name, function)``, ``http_get(name, host, port, path)``: the test process's own calls
  inside a namespace (a thread that entered it). ``wait_for(condition, timeout, what)``.
- ``ConntrackFlow``/``FlowTuple``: parsed ``conntrack -L`` lines.
- ``default_prefix()``, ``list_namespaces()``, ``cleanup_namespaces(prefix)``,
  ``reap_stale_namespaces(stem)``, ``endpoint(host, port)``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Iterable, Sequence

#: Stem of every namespace name this module makes by default: ``crt-<pid>-<n>-<role>``.
DEFAULT_STEM = "crt"

_SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def tool(name: str) -> str | None:
    """Absolute path of a command, also looking in sbin directories missing from PATH."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _tool_or_raise(name: str) -> str:
    path = tool(name)
    if path is None:
        raise LabError(f"'{name}' not found (install it: apt-get install {_PACKAGE_OF.get(name, name)})")
    return path


_PACKAGE_OF = {"ip": "iproute2", "iptables": "iptables", "ip6tables": "iptables", "conntrack": "conntrack",
               "setpriv": "util-linux"}


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its output."""


def default_prefix(stem: str = DEFAULT_STEM) -> str:
    """The per-process namespace prefix, ``<stem>-<pid>-``."""
    return f"{stem}-{os.getpid()}-"


def endpoint(host: str, port: int) -> str:
    """``10.0.0.1:80`` or ``[fd00::1]:80``, as conn-reaper prints endpoints."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None,
         env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input, env=env,
                                stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}\nstdout: {error.stdout}\nstderr: {error.stderr}")
    if check and result.returncode != 0:
        raise LabError(f"exit {result.returncode}: {' '.join(argv)}\nstdout: {result.stdout}\nstderr: {result.stderr}")
    return result


# ---------------------------------------------------------------------------------------------
# Namespace bookkeeping


def list_namespaces() -> list[str]:
    """Names of every named network namespace (``ip netns list``)."""
    result = _run([_tool_or_raise("ip"), "netns", "list"], check=False)
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def namespace_pids(name: str) -> list[int]:
    result = _run([_tool_or_raise("ip"), "netns", "pids", name], check=False)
    return [int(token) for token in result.stdout.split() if token.isdigit()]


def _kill_pids(pids: Iterable[int], grace: float = 1.0) -> None:
    pids = [pid for pid in pids if pid != os.getpid()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for pid in pids:
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.02)
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_child(process: subprocess.Popen, *, quit_line: bytes | None = None, grace: float = 3.0) -> bool:
    """Stops a child: ``quit_line`` on its stdin if given, else SIGTERM; SIGKILL after ``grace`` seconds.
    Closes its stdin and stdout pipes. Returns True when it stopped by itself."""
    stopped_by_itself = True
    if process.poll() is None:
        try:
            if quit_line is not None:
                process.stdin.write(quit_line)
                process.stdin.flush()
            else:
                process.send_signal(signal.SIGTERM)
            process.wait(timeout=grace)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
    if process.poll() is None:
        stopped_by_itself = False
        process.kill()
        process.wait(timeout=5)
    for stream in (process.stdin, process.stdout):
        if stream is None:
            continue
        try:
            stream.close()
        except OSError:
            pass
    return stopped_by_itself


def delete_namespace(name: str) -> None:
    """Kills the processes inside a namespace of ours, then deletes it."""
    _kill_pids(namespace_pids(name))
    result = _run([_tool_or_raise("ip"), "netns", "delete", name], check=False)
    if result.returncode != 0 and name in list_namespaces():
        raise LabError(f"could not delete namespace {name}: {result.stderr.strip()}")


def cleanup_namespaces(prefix: str) -> list[str]:
    """Deletes every namespace whose name starts with ``prefix`` (and kills what runs inside).
    Returns the names it deleted. Use a prefix that only your run makes, e.g. default_prefix()."""
    if not prefix:
        raise ValueError("refusing to clean up namespaces with an empty prefix")
    deleted = []
    for name in list_namespaces():
        if name.startswith(prefix):
            delete_namespace(name)
            deleted.append(name)
    return deleted


def reap_stale_namespaces(stem: str = DEFAULT_STEM) -> list[str]:
    """Deletes ``<stem>-<pid>-...`` namespaces whose creating process no longer exists."""
    pattern = re.compile(rf"^{re.escape(stem)}-(\d+)-")
    deleted = []
    for name in list_namespaces():
        match = pattern.match(name)
        if match and not pid_alive(int(match.group(1))):
            delete_namespace(name)
            deleted.append(name)
    return deleted


# ---------------------------------------------------------------------------------------------
# conntrack


@dataclasses.dataclass(frozen=True)
class FlowTuple:
    src: str
    dst: str
    sport: int | None
    dport: int | None

    @property
    def source(self) -> str:
        return endpoint(self.src, self.sport) if self.sport is not None else self.src

    @property
    def destination(self) -> str:
        return endpoint(self.dst, self.dport) if self.dport is not None else self.dst


@dataclasses.dataclass(frozen=True)
class ConntrackFlow:
    """One line of ``conntrack -L``."""
    family: str          # "ipv4" | "ipv6"
    proto: str           # "tcp" | "udp" | ...
    state: str | None    # TCP state, None for UDP
    original: FlowTuple
    reply: FlowTuple
    line: str

    @staticmethod
    def parse(line: str) -> "ConntrackFlow | None":
        tokens = line.split()
        if len(tokens) < 4 or "src=" not in line:
            return None
        # `conntrack -L -o extended`: FAMILY FAMNUM PROTO PROTONUM TIMEOUT [STATE] src=... (original
        # tuple) src=... (reply tuple) [flags] mark=... use=...
        family, proto = tokens[0], tokens[2]
        state = tokens[5] if len(tokens) > 5 and "=" not in tokens[5] and not tokens[5].startswith("[") else None
        groups: list[dict] = []
        for token in tokens:
            if "=" not in token:
                continue
            key, value = token.split("=", 1)
            if key == "src":
                groups.append({})
            if groups and key in ("src", "dst", "sport", "dport") and key not in groups[-1]:
                groups[-1][key] = value
        if len(groups) < 2:
            return None

        def tuple_of(group: dict) -> FlowTuple:
            return FlowTuple(group["src"], group["dst"],
                             int(group["sport"]) if "sport" in group else None,
                             int(group["dport"]) if "dport" in group else None)

        return ConntrackFlow(family, proto, state, tuple_of(groups[0]), tuple_of(groups[1]), line)


# ---------------------------------------------------------------------------------------------
# Namespaces and links


class Namespace:
    """A named network namespace owned by a Lab. Create it with ``Lab.namespace(role)``."""

    def __init__(self, lab: "Lab", name: str, role: str) -> None:
        self.lab = lab
        self.name = name
        self.role = role
        self.processes: list[subprocess.Popen] = []
        self.peers: list = []

    def __repr__(self) -> str:
        return f"Namespace({self.name!r})"

    # -- running things inside -------------------------------------------------------------

    def argv(self, argv: Sequence[str]) -> list[str]:
        """The command line that runs ``argv`` inside this namespace."""
        return [_tool_or_raise("ip"), "netns", "exec", self.name, *map(str, argv)]

    def run(self, argv: Sequence[str], *, check: bool = True, timeout: float = 30, input: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """Runs a command inside the namespace and waits (text mode, output captured)."""
        return _run(self.argv(argv), check=check, timeout=timeout, input=input, env=env)

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Starts a command inside the namespace; the lab stops it on close. ``ip netns exec``
        execs the command, so the returned pid is the command's own."""
        process = subprocess.Popen(self.argv(argv), **kwargs)
        self.processes.append(process)
        return process

    def peer(self):
        """Starts the traffic peer's sockets role inside the namespace (stopped on lab close)."""
        from lab.traffic import Peer  # the drivers build on this module
        peer = Peer(self)
        self.peers.append(peer)
        return peer

    def pids(self) -> list[int]:
        return namespace_pids(self.name)

    def wait_until_answers(self, url: str, timeout: float = 10.0) -> None:
        """Polls ``url`` from inside the namespace until it answers 2xx (an agent's /healthz, /readyz)."""
        deadline = time.monotonic() + timeout
        while self.run(["curl", "-sf", "-o", "/dev/null", url], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer within {timeout} s in {self.name}")
            time.sleep(0.1)

    # -- configuration ---------------------------------------------------------------------

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """``ip -n NAME ARGS``."""
        return _run([_tool_or_raise("ip"), "-n", self.name, *map(str, args)], check=check)

    def add_address(self, dev: str, cidr: str) -> None:
        """Adds an address; IPv6 addresses skip DAD so they are usable at once."""
        extra = ["nodad"] if ":" in cidr else []
        self.ip("addr", "add", cidr, "dev", dev, *extra)

    def add_route(self, prefix: str, via: str | None = None, dev: str | None = None) -> None:
        args = ["route", "add", prefix]
        if via:
            args += ["via", via]
        if dev:
            args += ["dev", dev]
        if ":" in prefix:
            args = ["-6", *args]
        self.ip(*args)

    def iptables(self, *args: str) -> subprocess.CompletedProcess:
        """``iptables -w ARGS`` inside the namespace (its own tables, gone with the namespace)."""
        return self.run([_tool_or_raise("iptables"), "-w", *args])

    def ip6tables(self, *args: str) -> subprocess.CompletedProcess:
        return self.run([_tool_or_raise("ip6tables"), "-w", *args])

    def enable_conntrack(self) -> None:
        """Conntrack tracks a namespace only once a rule uses it: add a ctstate rule to OUTPUT for
        IPv4 and IPv6."""
        rule = ["-A", "OUTPUT", "-m", "conntrack", "--ctstate", "NEW,ESTABLISHED", "-j", "ACCEPT"]
        self.iptables(*rule)
        self.ip6tables(*rule)

    def dnat(self, vip: str, backend: str, port: int, proto: str = "tcp", backend_port: int | None = None) -> None:
        """Locally originated traffic to ``vip:port`` goes to ``backend:backend_port`` (a Service VIP)."""
        target = endpoint(backend, backend_port or port)
        if ":" in vip:
            self.ip6tables("-t", "nat", "-A", "OUTPUT", "-d", vip, "-p", proto, "--dport", str(port),
                           "-j", "DNAT", "--to-destination", target)
        else:
            self.iptables("-t", "nat", "-A", "OUTPUT", "-d", vip, "-p", proto, "--dport", str(port),
                          "-j", "DNAT", "--to-destination", target)

    def conntrack_flows(self, family: str | None = None, proto: str | None = None) -> list[ConntrackFlow]:
        """The namespace's conntrack table (``conntrack -L``), parsed. family: "ipv4"/"ipv6"."""
        flows = []
        for fam in ([family] if family else ["ipv4", "ipv6"]):
            argv = [_tool_or_raise("conntrack"), "-L", "-o", "extended", "-f", fam]
            if proto:
                argv += ["-p", proto]
            result = self.run(argv, check=False)
            if result.returncode != 0:
                raise LabError(f"conntrack -L failed in {self.name}: {result.stderr.strip()}")
            flows += [flow for flow in map(ConntrackFlow.parse, result.stdout.splitlines()) if flow]
        return flows

    # -- teardown --------------------------------------------------------------------------

    def stop_processes(self) -> None:
        for peer in self.peers:
            peer.stop()
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=2)


class NamedNamespace:
    """A namespace made by someone else (a benchmark's own lab), to run things in by name."""

    def __init__(self, name: str) -> None:
        self.name = name

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen([_tool_or_raise("ip"), "netns", "exec", self.name, *map(str, argv)], **kwargs)


@dataclasses.dataclass
class Link:
    a: Namespace
    b: Namespace
    a_dev: str
    b_dev: str


class Lab:
    """A set of namespaces that is removed as a whole. Use as a context manager or call close().

    ``prefix`` (default ``crt-<pid>-``) starts every namespace name; pick another stem for
    tools that should not be cleaned up by the test suite's session finalizer."""

    _counter = itertools.count(1)

    def __init__(self, prefix: str | None = None) -> None:
        if os.geteuid() != 0:
            raise LabError("network namespaces need root")
        self.prefix = prefix or default_prefix()
        self.id = next(Lab._counter)
        self.namespaces: list[Namespace] = []
        self.links: list[Link] = []
        self._closed = False

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def namespace(self, role: str) -> Namespace:
        """Creates a namespace ``<prefix><lab id>-<role>`` with lo up."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", role):
            raise ValueError(f"bad role {role!r}")
        name = f"{self.prefix}{self.id}-{role}"
        _run([_tool_or_raise("ip"), "netns", "add", name])
        namespace = Namespace(self, name, role)
        self.namespaces.append(namespace)
        namespace.ip("link", "set", "lo", "up")
        return namespace

    def link(self, a: Namespace, b: Namespace, addrs_a: Sequence[str] = (), addrs_b: Sequence[str] = (),
             a_dev: str | None = None, b_dev: str | None = None) -> Link:
        """A veth pair between two namespaces (created inside ``a``, never in the host namespace),
        both ends up, with the given addresses (``10.0.0.1/24``, ``fd00::1/64``)."""
        a_dev = a_dev or f"to-{b.role}"[:15]
        b_dev = b_dev or f"to-{a.role}"[:15]
        a.ip("link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b.name)
        link = Link(a, b, a_dev, b_dev)
        self.links.append(link)
        for namespace, dev, addrs in ((a, a_dev, addrs_a), (b, b_dev, addrs_b)):
            for cidr in addrs:
                namespace.add_address(dev, cidr)
            namespace.ip("link", "set", dev, "up")
        return link

    def remove(self, namespace: Namespace) -> None:
        """Stops what runs in one namespace of the lab and deletes it now (its links go with it)."""
        namespace.stop_processes()
        delete_namespace(namespace.name)
        self.namespaces.remove(namespace)
        self.links = [link for link in self.links if namespace not in (link.a, link.b)]

    def close(self) -> None:
        """Stops every process started through the lab, then deletes its namespaces. Idempotent."""
        if self._closed:
            return
        self._closed = True
        problems = []
        for namespace in self.namespaces:
            try:
                namespace.stop_processes()
            except Exception as error:  # keep cleaning
                problems.append(f"{namespace.name}: {error}")
        for namespace in self.namespaces:
            try:
                delete_namespace(namespace.name)
            except Exception as error:
                problems.append(str(error))
        if problems:
            raise LabError("lab cleanup: " + "; ".join(problems))


# ---------------------------------------------------------------------------------------------
# The test process's own calls inside a namespace (a thread enters it, not the process)

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"setns: {os.strerror(code)}")


def in_netns(namespace: str, function: Callable, *args, **kwargs):
    """Runs ``function`` on a fresh thread that has entered network namespace ``namespace`` (setns
    changes only the calling thread), and returns its result or raises its exception."""
    outcome: dict = {}

    def body() -> None:
        try:
            fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
            try:
                setns(fd)
            finally:
                os.close(fd)
            outcome["value"] = function(*args, **kwargs)
        except BaseException as error:  # handed to the caller
            outcome["error"] = error

    thread = threading.Thread(target=body, name=f"netns-{namespace}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _http_get(host: str, port: int, path: str, timeout: float) -> tuple[int, str]:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    if any(line.lower().startswith("transfer-encoding:") and "chunked" in line.lower() for line in lines[1:]):
        decoded = b""
        while body:
            size_line, _, body = body.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            decoded, body = decoded + body[:size], body[size + 2:]
        body = decoded
    return status, body.decode()


def http_get(namespace: str, host: str, port: int, path: str, timeout: float = 3.0) -> tuple[int, str]:
    """GET http://host:port/path from inside a namespace: (status, body)."""
    return in_netns(namespace, _http_get, host, port, path, timeout)


def can_connect(host: str, port: int, timeout: float) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Polls until ``condition()`` is truthy and returns it; AssertionError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
