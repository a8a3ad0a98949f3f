"""The deployment files (Deploy/) under their checkers, and the agent running what they ship.

- Each static section of Tests/Deploy/check_deploy.py (Kubernetes schemas 1.29 and 1.33 and rules,
  systemd-analyze, hadolint and the image's libraries against the built binary, `make -n image`,
  shellcheck, the one version, promtool on the alerts) passes on the real tree, and fails on
  copies broken the way a careless edit would break them: a check that cannot fail proves nothing.
- The configurations the deployments ship load in the real agent, run with the privilege that
  deployment gives it, inside a throwaway namespace; the sidecar's own command line finds the
  backends of kubespray's nginx.conf, and so does the kubespray overlay's, on that file and on
  kubespray's template rendered for IPv4 and IPv6, following a fourth apiserver added to it.
- promtool lints a real /metrics scrape of an agent that has just reaped a dead backend, and every
  metric family it serves is in Deploy/README.md's metrics reference.

The static sections need no root (only the tools `make deps` installs); the agent runs need the lab.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lab import privileges
from lab.agent import Agent
from conftest import unavailable
from lab.netns import endpoint
from lab.topology import OTHER4, TARGET4, TCP_PORT

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "Deploy"
EXIT_TOOL_MISSING = 3
# The one version, as the deploy checks read it: the breakages below are spelled with it.
VERSION = re.search(r'current = "([^"]+)"', (REPO / "Sources/Reaper/Version.swift").read_text()).group(1)


def run_checks(*args: str, deploy: Path | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, str(REPO / "Tests" / "Deploy" / "check_deploy.py"), *args]
    if deploy is not None:
        argv += ["--deploy", str(deploy)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    if result.returncode == EXIT_TOOL_MISSING:
        unavailable(f"a deploy checker is missing: {result.stdout.strip().splitlines()[-1]}")
    return result


def built_binary() -> str:
    """The binary the container section compares with the image, without root (unlike reaper_binary)."""
    path = os.path.abspath(os.environ.get("CONN_REAPER") or REPO / ".build" / "debug" / "conn-reaper")
    if not os.access(path, os.X_OK):
        unavailable(f"conn-reaper binary not found at {path}: build it or set CONN_REAPER")
    return path


def failures(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("FAIL")]


# ---------------------------------------------------------------------------------------------
# Static sections on the real tree

MINIMUM_CHECKS = {"kubernetes": 90, "systemd": 25, "container": 20, "shell": 2, "version": 8, "monitoring": 40}

# Lines that must be among a section's passes: the checks that need more than the files (the built
# binary, make) must not fall silent.
REQUIRED_PASSES = {
    "container": ["the image copies exactly the libraries conn-reaper needs beyond gcr.io/distroless/cc-debian12",
                  "make image builds for linux/amd64, linux/arm64",
                  "make image tags ghcr.io/conn-reaper/conn-reaper:"],
    "monitoring": ["promtool check rules accepts", "promtool test rules Tests/Deploy/monitoring/alerts-test.yaml passes",
                   "ConnReaperDown runbook_url points at a heading"],
}


@pytest.mark.parametrize("section", sorted(MINIMUM_CHECKS))
def test_static_section_passes(section):
    result = run_checks(section, "--binary", built_binary())
    output = result.stdout + result.stderr
    assert result.returncode == 0 and not failures(output), output
    passes = [line for line in output.splitlines() if line.startswith("ok")]
    assert len(passes) >= MINIMUM_CHECKS[section], f"only {len(passes)} checks ran:\n{output}"
    for expected in REQUIRED_PASSES.get(section, []):
        assert any(expected in line for line in passes), f"no pass with {expected!r}:\n{output}"


# ---------------------------------------------------------------------------------------------
# ... and on broken copies

BREAKAGES = [
    # (section, file under Deploy/, old text, new text, the FAIL line that must appear)
    ("kubernetes", "kubernetes/base/daemonset.yaml", "privileged: false", "privileged: true",
     "container conn-reaper is not privileged"),
    ("kubernetes", "kubernetes/base/daemonset.yaml", "add: [NET_ADMIN]", "add: [NET_ADMIN, SYS_ADMIN]",
     "adds NET_ADMIN and nothing else"),
    ("kubernetes", "kubernetes/base/daemonset.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true",
     "DaemonSet/conn-reaper validates strictly against Kubernetes 1.29"),
    ("kubernetes", "kubernetes/base/daemonset.yaml", "apiVersion: apps/v1", "apiVersion: apps/v1beta2",
     "DaemonSet/conn-reaper validates strictly against Kubernetes 1.33"),
    ("kubernetes", "kubernetes/base/daemonset.yaml", "      hostNetwork: true\n", "",
     "runs in the node's network namespace"),
    ("kubernetes", "kubernetes/base/daemonset.yaml", "              host: 127.0.0.1\n              path: /readyz",
     "              path: /readyz", "readinessProbe is GET /readyz on 127.0.0.1:9747"),
    ("kubernetes", "kubernetes/base/config.yaml", "listen: 127.0.0.1:9747", "listen: 127.0.0.1:9100",
     "livenessProbe is GET /healthz on 127.0.0.1:9100"),
    ("kubernetes", "kubernetes/base/kustomization.yaml", "  - daemonset.yaml\n",
     "  - daemonset.yaml\n  - role.yaml\n", "no RBAC objects"),
    ("kubernetes", "kubernetes/podmonitor/config.yaml", "fall: 3", "fall: 5",
     "podmonitor/config.yaml equals base/config.yaml but for listen"),
    ("kubernetes", "kubernetes/podmonitor/podmonitor.yaml", "interval: 30s", "intervall: 30s",
     "matches the minimal PodMonitor schema"),
    ("kubernetes", "kubernetes/sidecar/nginx-proxy.yaml", "restartPolicy: Always  ", "restartPolicy: OnFailure  ",
     "restartPolicy: Always (a native sidecar)"),
    ("kubernetes", "kubernetes/sidecar/nginx-proxy.yaml", "--upstream=kube_apiserver", "--upstream=apiserver",
     "--upstream apiserver is an upstream block"),
    ("kubernetes", "kubernetes/kubespray/daemonset-patch.yaml", "operator: DoesNotExist", "operator: Exists",
     "runs only on nodes without node-role.kubernetes.io/control-plane"),
    ("kubernetes", "kubernetes/kubespray/daemonset-patch.yaml", "      mountPath: /etc/nginx\n      readOnly: true",
     "      mountPath: /etc/nginx\n      readOnly: false", "volume etc-nginx is mounted read-only"),
    ("kubernetes", "kubernetes/kubespray/daemonset-patch.yaml", "      mountPath: /etc/nginx\n",
     "      mountPath: /etc/nginx/nginx.conf\n", "is the host's /etc/nginx/nginx.conf, read-only, through its directory"),
    ("kubernetes", "kubernetes/kubespray/daemonset-patch.yaml", "    - --fall=3\n", "    - --fall=5\n",
     "its command line is the native sidecar's but for --listen"),
    ("kubernetes", "kubernetes/kubespray/daemonset-patch.yaml", "path: /etc/kubernetes/ssl/ca.crt\n",
     "path: /etc/kubernetes/pki/ca.crt\n", "probes over https with kubespray's cluster CA"),
    ("monitoring", "README.md", "### ConnReaperReloadFailed\n", "### Reload failed\n",
     "ConnReaperReloadFailed runbook_url points at a heading"),
    ("monitoring", "kubernetes/monitoring/prometheusrule.yaml", "          for: 5m\n          labels:\n            severity: critical",
     "          labels:\n            severity: critical", "ConnReaperAllBackendsDownGuard has for:"),
    ("monitoring", "kubernetes/monitoring/prometheusrule.yaml", 'expr: up{job=~"(.+/)?conn-reaper"} == 0',
     'expr: sum(up{job=~"(.+/)?conn-reaper"}) == 0', "promtool test rules"),
    ("monitoring", "kubernetes/monitoring/prometheusrule.yaml", "            severity: warning\n          annotations:\n            summary: no conn-reaper",
     "            severity: page\n          annotations:\n            summary: no conn-reaper", "ConnReaperAbsent has a severity"),
    ("monitoring", "kubernetes/monitoring/conn-reaper-dashboard.json", "count(conn_reaper_build_info{", "count(up{",
     "panel 'Agents reporting' uses only metrics the Metrics reference lists"),
    ("monitoring", "README.md", "| `conn_reaper_reaps_suppressed_total` |", "| `conn_reaper_reaps_held_total` |",
     "ConnReaperReapsSuppressed uses only metrics the Metrics reference lists"),
    ("kubernetes", "kubernetes/monitoring/prometheusrule.yaml", "          for: 1m\n          labels:\n            severity: critical",
     "          fore: 1m\n          labels:\n            severity: critical", "matches the minimal PrometheusRule schema"),
    ("systemd", "systemd/conn-reaper.service", "\nPrivateTmp=yes\n", "\nPrivateTmp=yes\nPrivateNetwork=yes\n",
     "no PrivateNetwork"),
    ("systemd", "systemd/conn-reaper.service", "AF_INET6 AF_NETLINK", "AF_INET6", "allows AF_NETLINK"),
    ("systemd", "systemd/conn-reaper.service", "\nProtectSystem=strict\n", "\nProtectSytem=strict\n",
     "systemd-analyze verify reports nothing"),
    ("systemd", "systemd/conn-reaper.service", "\nCapabilityBoundingSet=CAP_NET_ADMIN\n",
     "\nCapabilityBoundingSet=CAP_NET_ADMIN CAP_SYS_ADMIN\n", "CapabilityBoundingSet=CAP_NET_ADMIN"),
    ("container", "container/Dockerfile", "apt-get install -y --no-install-recommends libmnl-dev",
     "apt-get install -y libmnl-dev", "hadolint finds nothing"),
    ("container", "container/Dockerfile", "/out/lib/libnfnetlink.so.0 /usr/lib/", "/usr/lib/",
     "the image copies exactly the libraries conn-reaper needs"),
    ("container", "container/Dockerfile", "for soname in libmnl.so.0 ", "for soname in libmnl.so.0 libz.so.1 ",
     "the run stage copies exactly the libraries the build stage staged"),
    ("container", "container/Dockerfile", "/out/lib/libnfnetlink.so.0 /usr/lib/",
     "/out/lib/libnfnetlink.so.0 /usr/lib/x86_64-linux-gnu/", "no instruction names an architecture"),
    ("container", "container/Dockerfile", "\nUSER 65532:65532\n", "\nUSER 0:0\n", "the image's user is non-root"),
    ("container", "container/Dockerfile", "cc-debian12:nonroot", "debian:bookworm-slim",
     "the run stage is a minimal glibc image"),
    ("version", "kubernetes/base/kustomization.yaml", f"newTag: {VERSION}", "newTag: 0.0.1",
     f"newTag is {VERSION}"),
    ("version", "container/Dockerfile", f"ARG VERSION={VERSION}", "ARG VERSION=0.0.1", f"ARG VERSION={VERSION}, once"),
    ("version", "kubernetes/sidecar/nginx-proxy.yaml", f"conn-reaper:{VERSION}", "conn-reaper:0.0.1",
     "conn-reaper:0.0.1 is the one version"),
    ("version", "README.md", f"conn-reaper:{VERSION} .", "conn-reaper:0.0.1 .", "is the one version"),
    ("shell", "systemd/install.sh", None, "#!/bin/sh\nrm -rf $PREFIX/etc/conn-reaper\n",
     "shellcheck Deploy/systemd/install.sh"),
]


@pytest.mark.parametrize("section,relative,old,new,expected", BREAKAGES,
                         ids=[f"{b[0]}:{b[4][:40]}" for b in BREAKAGES])
def test_checks_catch_a_broken_copy(tmp_path, section, relative, old, new, expected):
    deploy = tmp_path / "Deploy"
    shutil.copytree(DEPLOY, deploy)
    target = deploy / relative
    if old is None:
        target.write_text(new)
        target.chmod(0o755)
    else:
        text = target.read_text()
        assert text.count(old) == 1, f"{relative} must contain {old!r} exactly once: update this test"
        target.write_text(text.replace(old, new, 1))
    if relative.endswith("kustomization.yaml") and "role.yaml" in new:
        (target.parent / "role.yaml").write_text(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: conn-reaper\n"
            "  namespace: kube-system\nrules:\n  - apiGroups: ['']\n    resources: [pods]\n    verbs: [get]\n")

    result = run_checks(section, deploy=deploy)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert any(expected in line for line in failures(output)), f"no FAIL line with {expected!r}:\n{output}"


# ---------------------------------------------------------------------------------------------
# The shipped configurations in the real agent


def _config_with_test_ca(source: Path, directory: str, ca: str) -> tuple[str, dict]:
    text = re.sub(r"(ca_file:\s*)\S+", rf"\g<1>{ca}", source.read_text())
    path = privileges.write_file(directory, source.name, text)
    return path, yaml.safe_load(text)


SHIPPED_CONFIGS = [
    ("kubernetes/base/config.yaml", "kubernetes"),
    ("kubernetes/podmonitor/config.yaml", "kubernetes"),
    ("systemd/config.yaml", "systemd"),
]


@pytest.mark.parametrize("relative,shape", SHIPPED_CONFIGS, ids=[c[0] for c in SHIPPED_CONFIGS])
def test_shipped_config_loads_in_the_agent(lab, reaper_binary, relative, shape):
    directory = privileges.world_readable_dir("conn-reaper-config-")
    try:
        # The TLS file paths name the deployment's host or volume; a test CA stands in for them.
        ca = privileges.make_ca(directory)
        path, config = _config_with_test_ca(DEPLOY / relative, directory, ca)
        agent = Agent(lab.namespace("cfg"), reaper_binary, ["--config", path], shape=shape, listen=config["listen"])
        try:
            agent.wait_ready()
            assert agent.get("/healthz")[0] == 200
            status = agent.status()
            served = {pool["name"]: sorted(b["address"] for b in pool["backends"]) for pool in status["pools"]}
            assert served == {pool["name"]: sorted(pool["backends"]) for pool in config["pools"]}, status
            assert "invalid configuration" not in agent.log_text(None)
            assert agent.stop() == 0, agent.describe()
        finally:
            agent.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_sidecar_command_line_finds_kubespray_backends(lab, reaper_binary):
    """The sidecar's args from nginx-proxy.yaml, its two host paths pointed at test files: it reads
    kubespray's nginx.conf and watches exactly the kube_apiserver upstream's servers."""
    pod = yaml.safe_load((DEPLOY / "kubernetes/sidecar/nginx-proxy.yaml").read_text())
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "conn-reaper")
    nginx_conf = (DEPLOY / "kubernetes/sidecar/nginx.conf").read_text()
    servers = re.findall(r"^\s*server\s+(\d+\.\d+\.\d+\.\d+:\d+);", nginx_conf, re.M)
    assert len(servers) == 3, nginx_conf
    directory = privileges.world_readable_dir("conn-reaper-sidecar-")
    try:
        replacements = {"--nginx-conf": privileges.write_file(directory, "nginx.conf", nginx_conf),
                        "--tls-ca": privileges.make_ca(directory)}
        args = []
        for arg in sidecar["args"]:
            flag = arg.split("=", 1)[0]
            args.append(f"{flag}={replacements[flag]}" if flag in replacements else arg)
        assert args[0] == "run", args
        listen = next(a.split("=", 1)[1] for a in args if a.startswith("--listen="))
        agent = Agent(lab.namespace("side"), reaper_binary, args[1:], shape="kubernetes", listen=listen)
        try:
            agent.wait_ready()
            status = agent.status()
            assert [(p["name"], sorted(b["address"] for b in p["backends"])) for p in status["pools"]] == \
                [("kube_apiserver", sorted(servers))], status
            assert agent.stop() == 0, agent.describe()
        finally:
            agent.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# The kubespray overlay's command line on kubespray's nginx.conf

KUBESPRAY_TEMPLATE = Path(__file__).parent / "kubespray"


def overlay_args() -> list[str]:
    """The args the kubespray overlay gives the agent, from its JSON patch as written."""
    patch = yaml.safe_load((DEPLOY / "kubernetes/kubespray/daemonset-patch.yaml").read_text())
    return next(op["value"] for op in patch if op["path"] == "/spec/template/spec/containers/0/args")


def render_kubespray_nginx_conf(addresses: list[str]) -> str:
    """kubespray's nginx.conf for control-plane hosts at these addresses, as its template renders it."""
    try:
        import jinja2
    except ImportError:
        unavailable("Jinja2 is missing (make deps installs it)")
    import ipaddress
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(KUBESPRAY_TEMPLATE),
                                     undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    # ansible.utils.ipwrap: brackets around an IPv6 address, nothing else changed.
    environment.filters["ipwrap"] = lambda a: f"[{a}]" if ipaddress.ip_address(a).version == 6 else a
    hosts = {f"cp{index}": address for index, address in enumerate(addresses, 1)}
    return environment.get_template("nginx.conf.j2").render(
        groups={"kube_control_plane": list(hosts)}, hostvars={h: {"main_access_ip": a} for h, a in hosts.items()},
        kube_apiserver_port=6443, ipv6_stack=any(":" in a for a in addresses))


def shipped_nginx_conf(addresses: list[str]) -> str:
    """Deploy/kubernetes/sidecar/nginx.conf with its upstream's servers set to these addresses."""
    text = (DEPLOY / "kubernetes/sidecar/nginx.conf").read_text()
    servers = "".join(f"    server {a}:6443;\n" for a in addresses)
    return re.sub(r"(upstream kube_apiserver \{\n    least_conn;\n)(?:    server [^\n]+\n)+", rf"\g<1>{servers}", text)


def upstream_servers(nginx_conf: str) -> list[str]:
    block = re.search(r"upstream kube_apiserver \{(.*?)\}", nginx_conf, re.S).group(1)
    return sorted(re.findall(r"^\s*server\s+(\S+);", block, re.M))


NGINX_CONFS = {
    # (how the file is made, the three control-plane addresses, the fourth one added)
    "shipped-ipv4": (shipped_nginx_conf, ["192.0.2.11", "192.0.2.12", "192.0.2.13"], "192.0.2.14"),
    "kubespray-template-ipv4": (render_kubespray_nginx_conf, ["192.0.2.21", "192.0.2.22", "192.0.2.23"], "192.0.2.24"),
    "kubespray-template-ipv6": (render_kubespray_nginx_conf, ["2001:db8::21", "2001:db8::22", "2001:db8::23"],
                                "2001:db8::24"),
}


@pytest.mark.parametrize("case", sorted(NGINX_CONFS))
def test_kubespray_overlay_follows_nginx_conf(lab, reaper_binary, case):
    """Exactly the overlay's args, its two host paths pointed at test files: the agent watches the
    kube_apiserver upstream's servers, and a fourth control-plane node within 3 s of kubespray
    writing it into nginx.conf (a new file renamed over the old one, as ansible's template does)."""
    make, addresses, added = NGINX_CONFS[case]
    if case == "shipped-ipv4":
        assert upstream_servers((DEPLOY / "kubernetes/sidecar/nginx.conf").read_text()) == \
            sorted(f"{a}:6443" for a in addresses), "update NGINX_CONFS to sidecar/nginx.conf's servers"
    first = make(addresses)
    expected = upstream_servers(first)
    assert len(expected) == 3, first
    directory = privileges.world_readable_dir("conn-reaper-kubespray-")
    try:
        replacements = {"--nginx-conf": privileges.write_file(directory, "nginx.conf", first),
                        "--tls-ca": privileges.make_ca(directory)}
        args = [f"{a.split('=', 1)[0]}={replacements[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in replacements
                else a for a in overlay_args()]
        assert args[0] == "run" and all(flag in " ".join(args) for flag in replacements), args
        listen = next(a.split("=", 1)[1] for a in args if a.startswith("--listen="))
        agent = Agent(lab.namespace("kspray"), reaper_binary, args[1:], shape="kubernetes", listen=listen)
        try:
            agent.wait_ready()

            def watched() -> list[tuple[str, list[str]]]:
                return [(p["name"], sorted(b["address"] for b in p["backends"])) for p in agent.status()["pools"]]

            assert watched() == [("kube_apiserver", expected)], agent.status()

            second = make(addresses + [added])
            privileges.write_file(directory, "nginx.conf.new", second)
            os.rename(os.path.join(directory, "nginx.conf.new"), replacements["--nginx-conf"])
            written = time.monotonic()
            while watched() != [("kube_apiserver", upstream_servers(second))]:
                assert time.monotonic() - written < 3.0, f"not within 3 s: {agent.status()}\n{agent.log_text()}"
                time.sleep(0.05)
            assert agent.find("configuration reloaded", trigger="file changed"), agent.log_text()
            assert agent.stop() == 0, agent.describe()
        finally:
            agent.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# promtool on a live scrape


def documented_metric_families() -> set[str]:
    """The families named in the first column of Deploy/README.md's metrics reference."""
    text = (DEPLOY / "README.md").read_text()
    section = text.split("## Metrics reference", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `((?:conn_reaper|process)_\w+)`", section, re.M))


def test_promtool_accepts_a_live_scrape(topo, reaper_binary, tmp_path):
    args = ["--backend", endpoint(TARGET4, TCP_PORT), "--backend", endpoint(OTHER4, TCP_PORT),
            "--interval", "100ms", "--timeout", "100ms", "--rise", "1", "--fall", "2"]
    agent = Agent(topo.client, reaper_binary, args, shape="kubernetes")
    try:
        agent.wait_ready()
        targets = topo.client_peer.connect(TARGET4, TCP_PORT, count=2)
        assert topo.client_peer.probe(targets) == ["ok", "ok"]
        topo.server.iptables("-A", "INPUT", "-d", TARGET4, "-j", "DROP")
        agent.wait_log(rf"msg=reaped backend={re.escape(endpoint(TARGET4, TCP_PORT))} .*sockets=[1-9]")
        scrape = agent.metrics()
        assert agent.stop() == 0, agent.describe()
    finally:
        agent.close()

    scrape_file = tmp_path / "metrics.txt"
    scrape_file.write_text(scrape.text)
    result = run_checks("--metrics", str(scrape_file))
    assert result.returncode == 0 and not failures(result.stdout), result.stdout + result.stderr
    assert "ok    promtool check metrics finds nothing" in result.stdout

    assert scrape.get("conn_reaper_backend_up", backend=endpoint(TARGET4, TCP_PORT)) == 0
    assert scrape.get("conn_reaper_backend_up", backend=endpoint(OTHER4, TCP_PORT)) == 1
    assert scrape.get("conn_reaper_sockets_destroyed_total", backend=endpoint(TARGET4, TCP_PORT)) >= 2
    documented = documented_metric_families()
    served = scrape.families()
    assert served <= documented, f"served but not in Deploy/README.md's metrics reference: {served - documented}"
    assert len(served) >= 8, served
