"""The seed incident as a lab: real nginx between streaming clients and three upstreams.

    client ns "cli"              nginx ns "ngx"                               upstream ns "up1".."up3"
    to-ngx 10.233.0.2 <veth> to-cli 10.233.0.1                               
                                 (nginx listens :6443 stream, :8080 http;
                                  conn-reaper runs here, /metrics on
                                  127.0.0.1:9747)
                                 to-upN 10.233.N.1/24 <veth> to-ngx 10.233.N.2/24 (upstream server)

nginx is configured like the L4 balancer kubespray puts on every node (``stream``, ``least_conn``,
``proxy_timeout 10m``, ``proxy_connect_timeout 1s``) and like the L7 proxy of incident 1 (``least_conn``,
``proxy_read_timeout 30m``, ``proxy_next_upstream error timeout``, ``proxy_buffering off``). Each upstream
runs the traffic peer's ``upstream`` role (lab/peer/upstream.py): on TCP :6443 it writes ``NAME SEQ\\n`` every 50 ms to every
connection, on HTTP :8080 ``GET /stream`` gets the same lines as an endless chunked response and
``GET /healthz`` a 200. The client runs the ``streams`` role (lab/peer/streams.py): it keeps N streams open through nginx,
reconnects (or re-requests) as soon as one ends, like kubelet's watches do, and records when each line
arrived and from which upstream, and how each connection ended (``clean``: the upstream ended it
itself). "Cutting" an upstream sets its own veth end down: it can send nothing, no FIN, no RST, as in
incident 1.

An upstream can also misbehave the ways a live apiserver does (see ``serve_upstream``), each driven by
a signal and announced as an event (``wait_upstream_event``): a graceful shutdown like
kube-apiserver's (``terminate_gracefully``: /readyz 503 for ``shutdown_delay`` seconds while every
stream flows, then it ends its streams cleanly and exits 0), overload (``set_overloaded``: /readyz and
/healthz answer after 2 s, streams flow), wedged (``set_wedged``: connections accepted, nothing
answered or closed); ``drop_new_connections`` makes its namespace drop incoming SYNs.

Everything lives in namespaces of a lab.netns.Lab; nginx runs as a child (``daemon off``) with its pid
file, logs and temp paths in a private temp dir. ``IncidentLab.close()`` stops what it started and
removes the dir; ``Lab.close()`` then deletes the namespaces and kills whatever is left in them.

Timestamps are CLOCK_MONOTONIC (``time.monotonic()``), which every process of the machine shares, so
client arrival times, the cut and agent log lines are directly comparable.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

from lab.agent import Agent, rewrite_unnoticed
from lab.analysis import IncidentRun
from lab.netns import can_connect, in_netns, pid_alive, stop_child, tool, wait_for
from lab.peer.upstream import HTTP_PORT, TCP_PORT
from lab.traffic import PeerProcess, StreamClient

NGINX_ADDR, CLIENT_ADDR = "10.233.0.1", "10.233.0.2"
L4_PORT, L7_PORT = TCP_PORT, HTTP_PORT  # nginx listens on these, the upstreams too
UPSTREAM_NAMES = ("up1", "up2", "up3")
NGINX_STREAM_UPSTREAM, NGINX_HTTP_UPSTREAM = "kube_apiserver", "kube_apiserver_http"
NGINX_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def upstream_address(index: int) -> str:
    """Address of upstream ``index`` (1-based)."""
    return f"10.233.{index}.2"


# =============================================================================================
# The lab


NGINX_CONF = """\
# The seed incident's nginx: kubespray's L4 apiserver balancer and incident 1's L7 proxy.
load_module {module};
daemon off;
master_process on;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{
    multi_accept on;
    use epoll;
    worker_connections 4096;
}}

stream {{
    upstream {stream_upstream} {{
        least_conn;
{stream_servers}
    }}

    server {{
        listen {nginx}:{l4};
        proxy_pass {stream_upstream};
        proxy_timeout 10m;
        proxy_connect_timeout 1s;
    }}
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream {http_upstream} {{
        least_conn;
{http_servers}
    }}

    server {{
        listen {nginx}:{l7};
        location / {{
            proxy_pass http://{http_upstream};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 30m;
            proxy_connect_timeout 1s;
            proxy_next_upstream error timeout;
        }}
    }}
}}
"""


class IncidentLab:
    """Client, nginx and three upstream namespaces of one lab.netns.Lab; see the module docstring."""

    DIR_STEM = "crt-incident-"

    def __init__(self, lab, workers: int = 2, shutdown_delay: float = 3.0, switch: bool = False) -> None:
        self.lab = lab
        self.workers = workers
        self.shutdown_delay = shutdown_delay
        self.switch = switch
        self._remove_stale_dirs()
        self.dir = tempfile.mkdtemp(prefix=f"{self.DIR_STEM}{os.getpid()}-")
        os.chmod(self.dir, 0o755)      # nginx workers (nobody) may need to reach their temp paths
        self.client_ns = None
        self.nginx_ns = None
        self.upstream_ns: dict[str, object] = {}
        self.upstreams: dict[str, PeerProcess] = {}
        self._toggles: dict[tuple[str, str], bool] = {}       # (upstream, "overloaded"|"wedged") -> on
        self.nginx: subprocess.Popen | None = None
        self.clients: list[StreamClient] = []
        self.agents: list[Agent] = []
        self.conf_path = os.path.join(self.dir, "nginx.conf")
        self._closed = False

    @classmethod
    def _remove_stale_dirs(cls) -> None:
        """Temp dirs of earlier runs whose process is gone (killed before close() ran)."""
        root = Path(tempfile.gettempdir())
        for path in root.glob(f"{cls.DIR_STEM}*"):
            match = re.match(rf"{re.escape(cls.DIR_STEM)}(\d+)-", path.name)
            if match and not pid_alive(int(match.group(1))):
                shutil.rmtree(path, ignore_errors=True)

    # -- building --------------------------------------------------------------------------

    @classmethod
    def build(cls, lab, workers: int = 2, shutdown_delay: float = 3.0, switch: bool = False) -> "IncidentLab":
        """Builds the lab; ``workers`` nginx worker processes (kubespray's nginx-proxy runs 2, each
        with its own least_conn counts: no shared zone); ``shutdown_delay``: how long an upstream's
        graceful shutdown (terminate_gracefully) keeps serving with /readyz at 503. ``switch``: nginx
        reaches the upstreams through a bridge in a namespace of its own ("sw"), so cutting an
        upstream's link leaves nginx's own link up, as on a real network."""
        incident = cls(lab, workers, shutdown_delay, switch)
        try:
            incident._build()
        except BaseException:
            incident.close()
            raise
        return incident

    def _build(self) -> None:
        self.client_ns = self.lab.namespace("cli")
        self.nginx_ns = self.lab.namespace("ngx")
        self.lab.link(self.client_ns, self.nginx_ns, [f"{CLIENT_ADDR}/24"], [f"{NGINX_ADDR}/24"])
        if self.switch:
            self._build_switch()
        else:
            for index, name in enumerate(UPSTREAM_NAMES, start=1):
                namespace = self.lab.namespace(name)
                self.upstream_ns[name] = namespace
                self.lab.link(self.nginx_ns, namespace, [f"10.233.{index}.1/24"], [f"{upstream_address(index)}/24"],
                              a_dev=f"to-{name}", b_dev="to-ngx")
        # A node's conntrack tracks nginx's upstream flows (kube-proxy's rules make it so); here a
        # ctstate rule does, so the agent has entries to delete.
        self.nginx_ns.enable_conntrack()
        for name in UPSTREAM_NAMES:
            self.upstreams[name] = PeerProcess(self.upstream_ns[name], "upstream", name, self.shutdown_delay)
        self.write_nginx_conf()
        self.start_nginx()

    def _build_switch(self) -> None:
        """One broadcast domain: nginx's "to-sw" holds each upstream subnet's .1, every upstream its .2
        on "to-ngx" (so ``cut`` is the same), all joined by bridge br0 in the switch namespace."""
        switch = self.lab.namespace("sw")
        switch.ip("link", "add", "br0", "type", "bridge")
        ports = ["port-ngx"]
        self.lab.link(switch, self.nginx_ns, [], [f"10.233.{index}.1/24" for index in range(1, len(UPSTREAM_NAMES) + 1)],
                      a_dev="port-ngx", b_dev="to-sw")
        for index, name in enumerate(UPSTREAM_NAMES, start=1):
            namespace = self.lab.namespace(name)
            self.upstream_ns[name] = namespace
            self.lab.link(switch, namespace, [], [f"{upstream_address(index)}/24"], a_dev=f"port-{name}", b_dev="to-ngx")
            ports.append(f"port-{name}")
        for port in ports:
            switch.ip("link", "set", port, "master", "br0")
        switch.ip("link", "set", "br0", "up")

    def nginx_conf_text(self, stream_servers: Iterable[str] | None = None, http_servers: Iterable[str] | None = None) -> str:
        stream_servers = list(stream_servers or (f"{upstream_address(i)}:{L4_PORT}" for i in range(1, 4)))
        http_servers = list(http_servers or (f"{upstream_address(i)}:{L7_PORT}" for i in range(1, 4)))
        return NGINX_CONF.format(
            module=NGINX_MODULE, workers=self.workers, dir=self.dir, nginx=NGINX_ADDR, l4=L4_PORT, l7=L7_PORT,
            stream_upstream=NGINX_STREAM_UPSTREAM, http_upstream=NGINX_HTTP_UPSTREAM,
            stream_servers="\n".join(f"        server {s};" for s in stream_servers),
            http_servers="\n".join(f"        server {s};" for s in http_servers))

    def write_nginx_conf(self, **kwargs) -> str:
        with open(self.conf_path, "w") as conf:
            conf.write(self.nginx_conf_text(**kwargs))
        return self.conf_path

    def start_nginx(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.nginx = self.nginx_ns.popen([nginx, "-e", os.path.join(self.dir, "error.log"), "-p", self.dir,
                                          "-c", self.conf_path], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def up() -> bool:
            if self.nginx.poll() is not None:
                raise AssertionError(f"nginx exited {self.nginx.returncode}: {self.nginx.stderr.read().decode()}"
                                     f"\n{self.nginx_error_log()}")
            return all(in_netns(self.nginx_ns.name, can_connect, NGINX_ADDR, port, 0.5) for port in (L4_PORT, L7_PORT))
        wait_for(up, 10, "nginx to listen")

    def nginx_error_log(self, last: int = 40) -> str:
        try:
            with open(os.path.join(self.dir, "error.log")) as log:
                return "".join(log.readlines()[-last:])
        except OSError:
            return ""

    # -- addresses -------------------------------------------------------------------------

    @staticmethod
    def address(name: str) -> str:
        return upstream_address(UPSTREAM_NAMES.index(name) + 1)

    def backend(self, name: str, kind: str = "l4") -> str:
        """``IP:PORT`` of an upstream as nginx (and the agent) name it."""
        return f"{self.address(name)}:{L4_PORT if kind == 'l4' else L7_PORT}"

    def all_backends(self, kind: str = "l4") -> list[str]:
        return [self.backend(name, kind) for name in UPSTREAM_NAMES]

    # -- actions ---------------------------------------------------------------------------

    def cut(self, name: str) -> tuple[float, float]:
        """Sets upstream ``name``'s own veth end down: it can send nothing. Returns (before, after)."""
        before = time.monotonic()
        self.upstream_ns[name].ip("link", "set", "to-ngx", "down")
        return before, time.monotonic()

    def cut_many(self, names: Sequence[str]) -> tuple[float, float]:
        """Cuts several upstreams as close together as one command allows (``ip -batch``)."""
        before = time.monotonic()
        procs = [subprocess.Popen([tool("ip") or "ip", "-n", self.upstream_ns[n].name, "link", "set", "to-ngx", "down"])
                 for n in names]
        for proc in procs:
            assert proc.wait(timeout=10) == 0
        return before, time.monotonic()

    def restore(self, name: str) -> None:
        self.upstream_ns[name].ip("link", "set", "to-ngx", "up")

    def blackout(self, name: str, seconds: float) -> tuple[float, float]:
        """Upstream ``name`` drops every packet for ``seconds``, then is whole again (its processes and
        sockets never notice): a live backend's short outage. Returns (start, end) in time.monotonic()."""
        namespace = self.upstream_ns[name]
        start = time.monotonic()
        for chain in ("INPUT", "OUTPUT"):
            namespace.iptables("-I", chain, "-j", "DROP")
        time.sleep(max(0.0, seconds - (time.monotonic() - start)))
        for chain in ("INPUT", "OUTPUT"):
            namespace.iptables("-D", chain, "-j", "DROP")
        return start, time.monotonic()

    # -- upstream behaviours (see serve_upstream) ------------------------------------------

    def wait_upstream_event(self, name: str, key: str, timeout: float = 10.0, after: float | None = None) -> float:
        """Waits for upstream ``name``'s event ``key`` and returns its time.monotonic() (the first such
        event later than ``after``, if given). Events: draining, ending_streams, exiting (graceful
        shutdown), overloaded, overload_over, wedged, unwedged."""
        upstream = self.upstreams[name]
        found = upstream.wait_event(lambda e: e["event"] == key and (after is None or e["t"] > after), timeout)
        if found is None:
            raise AssertionError(f"upstream {name} reported no {key!r} within {timeout}s "
                                 f"(exit {upstream.process.poll()}): {upstream.events}")
        return found["t"]

    def terminate_gracefully(self, name: str) -> float:
        """SIGTERM to upstream ``name``: kube-apiserver's graceful shutdown. For ``shutdown_delay``
        seconds its /readyz answers 503 while it keeps serving every stream and new connection; then it
        ends every stream cleanly (events ``ending_streams``, ``exiting``) and exits 0. Returns the
        time.monotonic() just before the signal was sent."""
        sent = time.monotonic()
        self.upstreams[name].process.send_signal(signal.SIGTERM)
        return sent

    def wait_upstream_exit(self, name: str, timeout: float = 10.0) -> int:
        """Waits for upstream ``name`` to exit; returns its exit status."""
        return self.upstreams[name].process.wait(timeout=timeout)

    def _toggle(self, name: str, what: str, signum: int, on: bool, events: tuple[str, str], timeout: float) -> float:
        if self._toggles.get((name, what), False) == on:
            raise ValueError(f"upstream {name} is already {'' if on else 'not '}{what}")
        sent = time.monotonic()
        self.upstreams[name].process.send_signal(signum)
        value = self.wait_upstream_event(name, events[0] if on else events[1], timeout, after=sent)
        self._toggles[(name, what)] = on
        return value

    def set_overloaded(self, name: str, on: bool = True, timeout: float = 5.0) -> float:
        """Overloads upstream ``name`` (SIGUSR1; ``on=False`` ends it): /readyz and /healthz answer only
        after OVERLOAD_DELAY seconds, streams keep flowing. Returns the upstream's time.monotonic() of the
        change."""
        return self._toggle(name, "overloaded", signal.SIGUSR1, on, ("overloaded", "overload_over"), timeout)

    def set_wedged(self, name: str, on: bool = True, timeout: float = 5.0) -> float:
        """Wedges upstream ``name`` (SIGUSR2; ``on=False`` ends it): it still accepts connections but
        never reads, writes or closes anything: streams stall, probes connect and get no answer.
        Returns the upstream's time.monotonic() of the change."""
        return self._toggle(name, "wedged", signal.SIGUSR2, on, ("wedged", "unwedged"), timeout)

    def drop_new_connections(self, name: str, on: bool = True) -> None:
        """Upstream ``name`` drops every incoming SYN on both its ports (iptables in its namespace), so a
        new connection (a probe, nginx's connect) times out while the established streams keep flowing.
        ``on=False`` removes the rules."""
        for port in (L4_PORT, L7_PORT):
            self.upstream_ns[name].iptables("-I" if on else "-D", "INPUT", "-p", "tcp", "--syn", "--dport", str(port),
                                            "-j", "DROP")

    def start_client(self, l4: int = 30, l7: int = 0, send_every: float = 0.0) -> StreamClient:
        """``send_every``: each L4 stream also writes a line toward its upstream this often (seconds),
        so nginx's upstream connections carry data both ways."""
        specs = []
        if l4:
            specs.append(("l4", NGINX_ADDR, L4_PORT, l4, "", send_every))
        if l7:
            specs.append(("l7", NGINX_ADDR, L7_PORT, l7, "/stream"))
        client = StreamClient(self.client_ns, specs)
        self.clients.append(client)
        return client

    def wait_flowing(self, client: StreamClient, timeout: float = 10.0, need_all_backends: bool = True) -> dict:
        """Waits until every stream got a line in the last 0.2 s (and, by default, every upstream
        serves at least one stream of each kind); returns {kind: {backend: count}}."""
        def flowing():
            status = client.status()
            streams = status["streams"]
            if any(s["age"] is None or s["age"] > 0.2 for s in streams):
                return None
            distribution: dict = {}
            for s in streams:
                distribution.setdefault(s["kind"], dict.fromkeys(UPSTREAM_NAMES, 0))[s["backend"]] += 1
            if need_all_backends and any(0 in counts.values() for counts in distribution.values()):
                return None
            return distribution
        try:
            return wait_for(flowing, timeout, "every stream to flow", interval=0.1)
        except AssertionError as error:
            raise AssertionError(f"{error}: {client.status()}\n{self.nginx_error_log()}") from None

    def start_agent(self, binary: str, args: Sequence[str]) -> Agent:
        agent = Agent(self.nginx_ns, binary, args)
        self.agents.append(agent)
        return agent

    def write_file(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as handle:
            handle.write(text)
        return path

    def rewrite_unnoticed(self, name: str, text: str) -> str:
        """Replaces a file's content keeping the stamp the agent's file watcher compares (see
        lab.agent.rewrite_unnoticed), so only a SIGHUP can make the agent read it."""
        return rewrite_unnoticed(os.path.join(self.dir, name), text)

    def nginx_upstream_sockets(self, name: str, kind: str = "l4", state: str = "established") -> list[str]:
        """TCP sockets of the nginx namespace toward an upstream in ``state`` (an ``ss`` state or
        state group: established, syn-sent, connected, ...), as ``ss`` lines. The agent's probes
        run in this namespace too, but a probe is never established for long."""
        address = self.address(name)
        port = L4_PORT if kind == "l4" else L7_PORT
        result = self.nginx_ns.run(["ss", "-Htn", "state", state, "dst", f"{address}:{port}"])
        return [line for line in result.stdout.splitlines() if line.strip()]

    def run_incident(self, client: StreamClient, dead: str, window: float,
                     agent: Agent | None = None, settle: float = 0.0) -> IncidentRun:
        """Cuts ``dead`` once every stream flows (and ``settle`` seconds more), waits ``window``
        seconds, and collects the logs."""
        self.wait_flowing(client)
        time.sleep(settle)
        distribution = self.wait_flowing(client)
        t_cut, t_cut_done = self.cut(dead)
        time.sleep(max(0.0, t_cut + window - time.monotonic()))
        t_end = time.monotonic()
        dump = client.dump()
        reaps = []
        if agent is not None:
            dead_backends = {self.backend(dead, "l4"), self.backend(dead, "l7")}
            reaps = [line for line in agent.reaps() if line.fields.get("backend") in dead_backends]
        return IncidentRun(dead, t_cut, t_cut_done, t_end, dump, distribution, [line.t for line in reaps],
                           agent is not None, reaps)

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the agents, clients, nginx and upstreams this lab started and removes its temp dir.
        Idempotent; the namespaces go with the lab.netns.Lab."""
        if self._closed:
            return
        self._closed = True
        for agent in self.agents:
            try:
                agent.stop(timeout=3)
            except Exception:
                pass
        for client in self.clients:
            try:
                client.stop()
            except Exception:
                pass
        for upstream in self.upstreams.values():
            if upstream.running():
                upstream.process.kill()     # SIGTERM would be their graceful shutdown: seconds long
            upstream.stop(grace=3)
        if self.nginx is not None:
            stop_child(self.nginx, grace=3)
            if self.nginx.stderr:
                self.nginx.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def assert_reaped(line, streams: int, info: str) -> None:
    """A reap line ended exactly the ``streams`` upstream sockets nginx held (the agent spares its
    own probe sockets, which may still be in SYN_SENT toward the dead backend), without errors."""
    sockets = int(line.fields["sockets"])
    assert sockets == streams, f"reaped {sockets} sockets for {streams} streams\n{info}"
    assert int(line.fields["errors"]) == 0, info


def start_agent(incident: IncidentLab, binary: str, args) -> Agent:
    agent = incident.start_agent(binary, args)
    agent.wait_ready()
    return agent
