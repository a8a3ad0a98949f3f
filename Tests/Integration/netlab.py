"""netlab: throwaway network namespaces for kernel tests, benchmarks and end-to-end runs.

Everything happens inside namespaces this module creates: the host namespace's addresses, routes
and firewall are never touched. Needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2.

Typical use::

    from netlab import Lab

    with Lab() as lab:                                   # namespaces named crt-<pid>-<n>-<role>
        client, server = lab.namespace("cli"), lab.namespace("srv")
        lab.link(client, server, ["10.231.0.1/24", "fd00:231::1/64"],
                                 ["10.231.0.2/24", "fd00:231::2/64"])
        client.enable_conntrack()                         # make conntrack track this namespace
        srv = server.peer()                               # sockpeer.py running in the namespace
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

- ``Lab(prefix=None)``: ``namespace(role)``, ``link(a, b, addrs_a, addrs_b)``, ``close()``.
- ``Namespace``: ``run(argv)``, ``popen(argv)``, ``ip(...)``, ``iptables(...)``/``ip6tables(...)``,
  ``add_route(...)``, ``enable_conntrack()``, ``dnat(...)``, ``conntrack_flows(...)``, ``peer()``,
  ``pids()``.
- ``Peer``: ``listen``, ``connect``, ``probe``, ``connect_status``, ``stats``, ``close_sockets``,
  ``stop``; see sockpeer.py for the protocol.
- ``ConntrackFlow``/``FlowTuple``: parsed ``conntrack -L`` lines.
- ``default_prefix()``, ``list_namespaces()``, ``cleanup_namespaces(prefix)``,
  ``reap_stale_namespaces(stem)``, ``endpoint(host, port)``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

HERE = Path(__file__).resolve().parent
SOCKPEER = HERE / "sockpeer.py"

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
        self.peers: list[Peer] = []

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

    def peer(self) -> "Peer":
        """Starts sockpeer.py inside the namespace (stopped on lab close)."""
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
# The socket peer


class PeerError(LabError):
    pass


class Peer:
    """sockpeer.py running inside a namespace, driven over JSON lines. Start with Namespace.peer()."""

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self.stderr_file = tempfile.TemporaryFile(mode="w+")
        self.process = namespace.popen(
            [sys.executable, "-u", str(SOCKPEER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr_file)
        self._buffer = b""
        ready = self._read_line(timeout=10)
        if not ready.get("ready"):
            raise PeerError(f"sockpeer did not start: {ready}")
        self.pid = ready["pid"]

    def __repr__(self) -> str:
        return f"Peer({self.namespace.name}, pid={self.pid})"

    def _stderr(self) -> str:
        self.stderr_file.seek(0)
        return self.stderr_file.read()[-4000:]

    def _read_line(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerError(f"sockpeer in {self.namespace.name} did not answer within {timeout}s; "
                                f"stderr: {self._stderr()}")
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise PeerError(f"sockpeer in {self.namespace.name} exited "
                                    f"({self.process.poll()}); stderr: {self._stderr()}")
                self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def request(self, op: str, answer_timeout: float = 30, **fields) -> dict:
        """Sends one request and returns the answer; raises PeerError when it is not ok."""
        if self.process.poll() is not None:
            raise PeerError(f"sockpeer in {self.namespace.name} is gone; stderr: {self._stderr()}")
        self.process.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
        self.process.stdin.flush()
        answer = self._read_line(answer_timeout)
        if not answer.get("ok"):
            raise PeerError(f"{op} {fields} failed in {self.namespace.name}: {answer.get('error')}")
        return answer

    def listen(self, proto: str, host: str, port: int, v6only: bool = False) -> int:
        """Starts an echo server; returns its id. host "::" with v6only False is dual-stack."""
        return self.request("listen", proto=proto, host=host, port=port, v6only=v6only)["id"]

    def connect(self, host: str, port: int, proto: str = "tcp", count: int = 1, wait: bool = True,
                family: str | None = None, timeout: float = 5, source: str | None = None) -> list[int]:
        """Opens ``count`` client sockets; returns their ids. wait=False leaves a TCP connect pending;
        ``source`` binds the local address; ``family`` ("inet"/"inet6") overrides the guess from host."""
        fields = dict(proto=proto, host=host, port=port, count=count, wait=wait, timeout=timeout)
        if family:
            fields["family"] = family
        if source:
            fields["source"] = source
        return self.request("connect", answer_timeout=30 + count * timeout / 10, **fields)["ids"]

    def connect_one(self, host: str, port: int, **kwargs) -> int:
        return self.connect(host, port, count=1, **kwargs)[0]

    def probe(self, ids: Sequence[int], timeout: float = 2.0) -> list[str]:
        """Each socket's state: "ok" when a byte round-trips, else an errno name (e.g.
        "ECONNABORTED", seen on the owner's next recv), "eof" or "timeout"."""
        return self.request("probe", answer_timeout=timeout + 30, ids=list(ids), timeout=timeout)["results"]

    def connect_status(self, ids: Sequence[int], timeout: float = 0) -> tuple[list[str], list[float | None]]:
        """Results of pending non-blocking connects ("pending", "ok" or an errno name) and when
        each was seen (seconds after the request)."""
        answer = self.request("connect_status", answer_timeout=timeout + 30, ids=list(ids), timeout=timeout)
        return answer["results"], answer["elapsed"]

    def stats(self, listener: int) -> dict:
        return self.request("stats", id=listener)

    def close_sockets(self, ids: Sequence[int]) -> None:
        self.request("close", ids=list(ids))

    def stop(self) -> None:
        """Asks the peer to quit, then makes sure the process is gone."""
        stop_child(self.process, quit_line=b'{"op": "quit"}\n')
        self.stderr_file.close()


# =============================================================================================
# The agent's output, parsed one way for every lab: logfmt lines and Prometheus text


_LOGFMT = re.compile(r'([A-Za-z0-9_.-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict[str, str]:
    fields = {}
    for key, value in _LOGFMT.findall(line):
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        fields[key] = value
    return fields


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """One /metrics scrape: ``value(name, **labels)`` sums the samples whose labels include ``labels``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict, float]] = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = _SAMPLE.match(line)
            if match:
                labels = dict(_LABEL.findall(match.group(2) or ""))
                self.samples.append((match.group(1), labels, float(match.group(3))))

    def matching(self, name: str, **labels: str) -> list[tuple[dict, float]]:
        return [(l, v) for n, l, v in self.samples if n == name and all(l.get(k) == x for k, x in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        return sum(v for _, v in self.matching(name, **labels))

    def has(self, name: str, **labels: str) -> bool:
        return bool(self.matching(name, **labels))

    def families(self) -> set[str]:
        return set(re.findall(r"^# TYPE (\S+) ", self.text, re.M))

