#!/usr/bin/env python3
"""Checks of conn-reaper's deployment files (Deploy/): schemas, linters, and the project's own rules.

    python3 Tests/Deploy/check_deploy.py                       # every static section
    python3 Tests/Deploy/check_deploy.py kubernetes systemd    # some sections
    python3 Tests/Deploy/check_deploy.py --metrics scrape.txt  # promtool on a real /metrics scrape
    python3 Tests/Deploy/check_deploy.py --deploy /tmp/copy/Deploy kubernetes   # another tree

Sections:
  kubernetes  every object under Deploy/kubernetes, and what `kubectl kustomize` builds from each
              kustomization, validated strictly (unknown fields rejected) against the Kubernetes 1.29
              and 1.33 schemas (kubernetes-validate, offline); the PodMonitor, whose CRD schema is not
              among them, against a minimal schema of its own here; then the rules the issue sets
              (hostNetwork, NET_ADMIN only, probes, ports, priority, tolerations, no RBAC, ...).
  systemd     `systemd-analyze verify` in a throwaway root (the unit's ExecStart must exist, and the
              host's /usr/local/bin is never touched) must print nothing; `systemd-analyze security`
              scores it; the unit's hardening rules.
  container   hadolint on Deploy/container/Dockerfile (any finding fails), and its structure.
  shell       shellcheck on every shell script in the repository.
  metrics     `promtool check metrics` on a scrape file given with --metrics.

Prints one line per check ("ok ..." or "FAIL ..."). Exit 0 when everything passed, 1 when something
failed, 3 when a tool is missing (`make deps` installs them).
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

sys.dont_write_bytecode = True

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_VERSIONS = ("1.29", "1.33")
STATIC_SECTIONS = ("kubernetes", "systemd", "container", "shell")
EXIT_TOOL_MISSING = 3

# Ports that well-known node agents hold on every node (hostNetwork or host processes): conn-reaper's
# must be none of them. kubelet, kube-proxy, scheduler, controller-manager, apiserver, etcd,
# node-exporter, Calico, Cilium, NodeLocal DNSCache, CoreDNS, kubespray's nginx-proxy health check,
# kube-vip, ingress-nginx, MetalLB, containerd/cri-o metrics.
NODE_PORTS_TAKEN = {
    10250: "kubelet", 10248: "kubelet healthz", 10255: "kubelet read-only", 10249: "kube-proxy metrics",
    10256: "kube-proxy healthz", 10259: "kube-scheduler", 10257: "kube-controller-manager",
    6443: "kube-apiserver", 2379: "etcd", 2380: "etcd peers", 2381: "etcd metrics", 9100: "node-exporter",
    9091: "calico-node felix metrics", 9099: "calico-node health", 9962: "cilium-agent metrics",
    9963: "cilium-operator metrics", 9964: "cilium-envoy metrics", 9965: "hubble metrics", 9879: "cilium health",
    9890: "cilium-agent", 4240: "cilium-health", 4244: "hubble", 9253: "nodelocaldns metrics",
    9353: "nodelocaldns", 8080: "nodelocaldns health", 9153: "coredns metrics", 8181: "coredns ready",
    8081: "kubespray nginx-proxy health", 2112: "kube-vip metrics", 10254: "ingress-nginx", 7472: "metallb",
    7946: "metallb memberlist", 1338: "containerd metrics", 9537: "cri-o metrics",
}

RBAC_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}

# A Prometheus duration, as the operator's CRD spells its pattern.
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"

# The Prometheus Operator's PodMonitor (monitoring.coreos.com/v1) is a CRD: kubernetes-validate has no
# schema for it. This is the part of its schema our PodMonitor uses, closed (unknown fields fail), so
# a typo cannot pass. Field names and types follow the operator's API reference.
PODMONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {
            "type": "object", "required": ["name"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object", "required": ["selector", "podMetricsEndpoints"], "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "namespaceSelector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "selector": {
                    "type": "object", "additionalProperties": False, "minProperties": 1,
                    "properties": {
                        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "matchExpressions": {"type": "array", "items": {
                            "type": "object", "required": ["key", "operator"], "additionalProperties": False,
                            "properties": {"key": {"type": "string"},
                                           "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                           "values": {"type": "array", "items": {"type": "string"}}}}},
                    },
                },
                "podMetricsEndpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "portNumber": {"type": "integer", "minimum": 1, "maximum": 65535},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}
CUSTOM_SCHEMAS = {("monitoring.coreos.com/v1", "PodMonitor"): PODMONITOR_SCHEMA}


class ToolMissing(Exception):
    pass


class Report:
    def __init__(self) -> None:
        self.failures = 0
        self.passes = 0

    def ok(self, what: str) -> None:
        self.passes += 1
        print(f"ok    {what}")

    def fail(self, what: str, detail: str = "") -> None:
        self.failures += 1
        print(f"FAIL  {what}" + (f": {detail}" if detail else ""))

    def check(self, condition: bool, what: str, detail: str = "") -> bool:
        if condition:
            self.ok(what)
        else:
            self.fail(what, detail)
        return bool(condition)

    def note(self, text: str) -> None:
        print(f"note  {text}")


def find_tool(name: str) -> str:
    """A tool on PATH, in this Python's scripts directory (pip installs there), or in an sbin."""
    found = shutil.which(name)
    if found:
        return found
    for directory in (sysconfig.get_path("scripts"), "/usr/sbin", "/sbin", "/usr/local/bin"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise ToolMissing(f"'{name}' is not installed (make deps installs it)")


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, **kwargs)


def tool_version(argv: list[str]) -> str:
    result = run(argv)
    return (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr) else "?"


# ---------------------------------------------------------------------------------------------
# Kubernetes


def _yaml():
    try:
        import yaml
    except ImportError as error:
        raise ToolMissing(f"PyYAML is missing: {error}")
    return yaml


def _kubernetes_validate():
    try:
        import kubernetes_validate
        import kubernetes_validate.utils as utils
    except ImportError as error:
        raise ToolMissing(f"kubernetes-validate is missing ({error}); make deps installs it")
    # Each validate() re-reads a 2 MB definitions file; the schema files never change during a run.
    if not hasattr(utils.schema_contents, "cache_info"):
        utils.schema_contents = functools.lru_cache(maxsize=None)(utils.schema_contents)
    return kubernetes_validate, utils


def load_documents(path: Path) -> list[dict]:
    yaml = _yaml()
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def is_kubernetes_object(doc) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc and "metadata" in doc


def object_name(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def validate_object(report: Report, doc: dict, where: str) -> None:
    """Strict schema validation against every version in KUBERNETES_VERSIONS."""
    _, utils = _kubernetes_validate()
    custom = CUSTOM_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
    if custom is not None:
        import jsonschema
        errors = sorted(jsonschema.Draft202012Validator(custom).iter_errors(doc), key=lambda e: list(e.path))
        detail = "; ".join(f"{'.'.join(map(str, e.path)) or '(root)'}: {e.message}" for e in errors)
        report.check(not errors, f"{where}: {object_name(doc)} matches the minimal {doc['kind']} schema "
                                 "(a CRD: not in the Kubernetes schemas)", detail)
        return
    for version in KUBERNETES_VERSIONS:
        what = f"{where}: {object_name(doc)} validates strictly against Kubernetes {version}"
        try:
            utils.validate(doc, version, strict=True)
        except utils.ValidationError as error:
            report.fail(what, f"{'.'.join(map(str, error.path))}: {error.message}")
        except utils.SchemaNotFoundError as error:
            # Not a pass: an unknown kind or a mistyped apiVersion would otherwise slip through.
            report.fail(what, error.message)
        else:
            report.ok(what)


def kustomize_build(directory: Path) -> list[dict] | None:
    """`kubectl kustomize DIR`, parsed; None when kubectl is not installed."""
    try:
        kubectl = find_tool("kubectl")
    except ToolMissing:
        return None
    result = run([kubectl, "kustomize", str(directory)])
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip() or f"exit {result.returncode}")
    yaml = _yaml()
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kustomization_files(kubernetes_dir: Path) -> list[Path]:
    return sorted(kubernetes_dir.rglob("kustomization.yaml"))


def kustomize_entry_points(kubernetes_dir: Path) -> list[Path]:
    """The kustomizations an operator applies: neither a Component nor a resource of another one."""
    files = kustomization_files(kubernetes_dir)
    referenced = set()
    for path in files:
        for entry in load_documents(path)[0].get("resources") or []:
            referenced.add((path.parent / entry).resolve())
    return [path.parent for path in files
            if load_documents(path)[0].get("kind") != "Component" and path.parent.resolve() not in referenced]


def check_kustomization_references(report: Report, path: Path, deploy: Path) -> None:
    """Every resource, component and generator file a kustomization names exists (kubectl-free)."""
    doc = load_documents(path)[0]
    missing = []
    for entry in (doc.get("resources") or []) + (doc.get("components") or []):
        target = (path.parent / entry)
        if not (target.is_file() or (target / "kustomization.yaml").is_file()):
            missing.append(entry)
    for generator in doc.get("configMapGenerator") or []:
        for entry in generator.get("files") or []:
            source = entry.split("=", 1)[-1]
            if not (path.parent / source).is_file():
                missing.append(source)
    report.check(not missing, f"{path.relative_to(deploy.parent)}: every file it names exists", f"missing {missing}")


def container_port(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for entry in container.get("ports") or []:
        if entry.get("name") == port:
            return entry.get("containerPort")
    return None


def parse_listen(text: str) -> tuple[str, int]:
    match = re.fullmatch(r"\[?([0-9A-Fa-f:.]+)\]?:(\d+)", str(text).strip())
    if not match:
        raise ValueError(f"listen '{text}' is not IP:PORT")
    return match.group(1), int(match.group(2))


def flag_value(args: list[str], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def mount_for(container: dict, path: str) -> dict | None:
    """The volumeMount a file path lives under (longest mountPath prefix)."""
    best = None
    for mount in container.get("volumeMounts") or []:
        mount_path = mount["mountPath"].rstrip("/")
        if path == mount_path or path.startswith(mount_path + "/"):
            if best is None or len(mount_path) > len(best["mountPath"].rstrip("/")):
                best = mount
    return best


def check_reaper_container(report: Report, where: str, pod: dict, container: dict, listen: tuple[str, int]) -> None:
    """The rules for a conn-reaper container, wherever it runs."""
    name = f"{where}: container {container['name']}"
    security = container.get("securityContext") or {}
    caps = security.get("capabilities") or {}
    report.check(security.get("privileged") in (None, False), f"{name} is not privileged")
    report.check(security.get("allowPrivilegeEscalation") is False, f"{name} sets allowPrivilegeEscalation: false")
    report.check(security.get("readOnlyRootFilesystem") is True, f"{name} has a read-only root file system")
    report.check([c.upper() for c in caps.get("drop") or []] == ["ALL"], f"{name} drops ALL capabilities",
                 f"drop: {caps.get('drop')}")
    report.check([c.upper().removeprefix("CAP_") for c in caps.get("add") or []] == ["NET_ADMIN"],
                 f"{name} adds NET_ADMIN and nothing else", f"add: {caps.get('add')}")
    report.check(not str(container.get("image", "")).endswith(":latest") and ":" in str(container.get("image", "")),
                 f"{name} pins an image tag", str(container.get("image")))

    resources = container.get("resources") or {}
    report.check(all(k in (resources.get("requests") or {}) for k in ("cpu", "memory"))
                 and "memory" in (resources.get("limits") or {}),
                 f"{name} requests cpu and memory and limits memory", str(resources))

    host, port = listen
    loopback = ipaddress.ip_address(host).is_loopback
    for probe_key, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = (container.get(probe_key) or {}).get("httpGet") or {}
        probe_port = container_port(container, probe.get("port"))
        ok = probe.get("path") == path and probe_port == port
        if loopback:
            ok = ok and probe.get("host") == host
        report.check(ok, f"{name} {probe_key} is GET {path} on {host if loopback else '(pod IP)'}:{port}",
                     f"httpGet {probe} (port resolves to {probe_port}); the agent listens on {host}:{port}")

    declared = [p for p in container.get("ports") or [] if p.get("containerPort") == port]
    host_network = pod.get("hostNetwork") is True
    report.check(bool(declared) and all(p.get("hostPort", port) == port for p in declared),
                 f"{name} declares its metrics port {port} (the node's port: hostNetwork)",
                 f"ports {container.get('ports')}")
    report.check(port not in NODE_PORTS_TAKEN, f"{name} metrics port {port} is not one other node agents use",
                 NODE_PORTS_TAKEN.get(port, ""))
    report.check(host_network, f"{where} runs in the node's network namespace (hostNetwork: true)")


def check_daemonset(report: Report, where: str, objects: list[dict]) -> None:
    kinds = [doc["kind"] for doc in objects]
    daemonsets = [doc for doc in objects if doc["kind"] == "DaemonSet"]
    if not report.check(len(daemonsets) == 1, f"{where}: exactly one DaemonSet", f"kinds: {kinds}"):
        return
    daemonset = daemonsets[0]
    pod = daemonset["spec"]["template"]["spec"]
    containers = pod.get("containers") or []
    reapers = [c for c in containers if c["name"] == "conn-reaper"]
    if not report.check(len(reapers) == 1, f"{where}: the DaemonSet runs a conn-reaper container"):
        return
    container = reapers[0]

    report.check(not (RBAC_KINDS & set(kinds)), f"{where}: no RBAC objects (conn-reaper never calls the API)",
                 f"found {sorted(RBAC_KINDS & set(kinds))}")
    report.check(pod.get("automountServiceAccountToken") is False,
                 f"{where}: no service account token is mounted")
    report.check(all((doc.get("metadata") or {}).get("namespace") == "kube-system" for doc in objects),
                 f"{where}: every object is in kube-system (system-node-critical is allowed there)",
                 str({object_name(d): (d.get('metadata') or {}).get('namespace') for d in objects}))
    report.check(pod.get("priorityClassName") == "system-node-critical", f"{where}: priorityClassName system-node-critical")
    report.check(not pod.get("hostPID") and not pod.get("hostIPC"), f"{where}: no hostPID, no hostIPC")
    tolerations = pod.get("tolerations") or []
    tolerates_all = any(t.get("operator") == "Exists" and not t.get("key") and not t.get("effect") for t in tolerations)
    tolerates_cp = tolerates_all or any(
        t.get("key") == "node-role.kubernetes.io/control-plane" and t.get("operator") == "Exists"
        and t.get("effect") in (None, "", "NoSchedule") for t in tolerations)
    report.check(tolerates_cp, f"{where}: tolerates the control-plane taint", str(tolerations))

    # Configuration: --config FILE comes from the ConfigMap's config.yaml.
    config_path = flag_value(container.get("args") or [], "--config")
    mount = mount_for(container, config_path or "")
    volume = next((v for v in pod.get("volumes") or [] if mount and v["name"] == mount["name"]), None)
    configmap_name = ((volume or {}).get("configMap") or {}).get("name")
    configmaps = {d["metadata"]["name"]: d for d in objects if d["kind"] == "ConfigMap"}
    key = os.path.relpath(config_path, mount["mountPath"]) if mount else None
    data = (configmaps.get(configmap_name) or {}).get("data") or {}
    if not report.check(bool(config_path) and key in data,
                        f"{where}: --config {config_path} is key {key} of ConfigMap {configmap_name}",
                        f"mount {mount}, volume {volume}, ConfigMaps {sorted(configmaps)}"):
        return
    config = _yaml().safe_load(data[key])
    try:
        listen = parse_listen(config.get("listen", "127.0.0.1:9747"))
    except ValueError as error:
        report.fail(f"{where}: listen", str(error))
        return
    check_reaper_container(report, f"{where}: DaemonSet", pod, container, listen)

    # TLS files named in the configuration must be mounted.
    for pool in config.get("pools") or []:
        tls = ((pool.get("probe") or {}).get("tls")) or {}
        for tls_key in ("ca_file", "cert_file", "key_file"):
            if tls.get(tls_key):
                report.check(mount_for(container, tls[tls_key]) is not None,
                             f"{where}: {tls_key} {tls[tls_key]} is on a mounted volume")

    # The optional PodMonitor must find the pods and their port, and the metrics must be reachable.
    for monitor in (doc for doc in objects if doc["kind"] == "PodMonitor"):
        labels = daemonset["spec"]["template"]["metadata"].get("labels") or {}
        selector = monitor["spec"]["selector"].get("matchLabels") or {}
        report.check(selector and all(labels.get(k) == v for k, v in selector.items()),
                     f"{where}: the PodMonitor selects the DaemonSet's pods", f"{selector} vs {labels}")
        port_names = {p.get("name") for p in container.get("ports") or []}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            report.check(endpoint.get("port") in port_names,
                         f"{where}: PodMonitor endpoint port '{endpoint.get('port')}' is a named container port")
        report.check(not ipaddress.ip_address(listen[0]).is_loopback,
                     f"{where}: with a PodMonitor the agent listens beyond loopback (Prometheus must reach it)",
                     f"listen {listen[0]}:{listen[1]}")


def check_sidecar(report: Report, path: Path, deploy: Path, daemonset_ports: set[int]) -> None:
    where = str(path.relative_to(deploy.parent))
    pods = [d for d in load_documents(path) if d.get("kind") == "Pod"]
    if not report.check(len(pods) == 1, f"{where}: one Pod"):
        return
    pod = pods[0]["spec"]
    sidecars = [c for c in pod.get("initContainers") or [] if c["name"] == "conn-reaper"]
    if not report.check(len(sidecars) == 1, f"{where}: conn-reaper is an init container"):
        return
    sidecar = sidecars[0]
    report.check(sidecar.get("restartPolicy") == "Always",
                 f"{where}: conn-reaper has restartPolicy: Always (a native sidecar)", str(sidecar.get("restartPolicy")))
    report.check(not pod.get("shareProcessNamespace"), f"{where}: no shared process namespace (not needed)")
    args = sidecar.get("args") or []
    nginx_conf = flag_value(args, "--nginx-conf")
    upstream = flag_value(args, "--upstream")
    nginx = next((c for c in pod.get("containers") or [] if c["name"].startswith("nginx")), None)
    if not report.check(bool(nginx_conf) and nginx is not None, f"{where}: conn-reaper reads nginx's config (--nginx-conf)"):
        return
    mine = mount_for(sidecar, nginx_conf)
    theirs = mount_for(nginx, "/etc/nginx/nginx.conf")
    report.check(mine is not None and theirs is not None and mine["name"] == theirs["name"]
                 and mine["mountPath"] == theirs["mountPath"],
                 f"{where}: --nginx-conf {nginx_conf} is nginx's own /etc/nginx/nginx.conf (same volume, same path)",
                 f"conn-reaper mount {mine}, nginx mount {theirs}")
    example = path.parent / "nginx.conf"
    if example.is_file():
        text = example.read_text()
        report.check(bool(upstream) and re.search(rf"^\s*upstream\s+{re.escape(upstream)}\s*{{", text, re.M) is not None,
                     f"{where}: --upstream {upstream} is an upstream block of {example.name}")
        stream = re.search(r"^stream\s*{(.*?)^}", text, re.M | re.S)
        report.check(stream is not None and re.search(r"listen\s+127\.0\.0\.1:6443;", stream.group(1)) is not None
                     and re.search(rf"proxy_pass\s+{re.escape(upstream or '')};", stream.group(1)) is not None,
                     f"{where}: {example.name} is kubespray's L4 stream proxy of that upstream on 127.0.0.1:6443")
    for flag in ("--tls-ca", "--tls-cert", "--tls-key"):
        value = flag_value(args, flag)
        if value:
            report.check(mount_for(sidecar, value) is not None, f"{where}: {flag} {value} is on a mounted volume")
    listen = parse_listen(flag_value(args, "--listen") or "127.0.0.1:9747")
    check_reaper_container(report, where, pod, sidecar, listen)
    report.check(listen[1] not in daemonset_ports,
                 f"{where}: its metrics port {listen[1]} differs from the DaemonSet's {sorted(daemonset_ports)}")
    report.check(pod.get("priorityClassName") == "system-node-critical", f"{where}: priorityClassName system-node-critical")


def check_configs_in_step(report: Report, kubernetes_dir: Path) -> None:
    """podmonitor/config.yaml replaces the base one: only `listen` (and comments) may differ."""
    yaml = _yaml()
    base, monitored = kubernetes_dir / "base" / "config.yaml", kubernetes_dir / "podmonitor" / "config.yaml"
    if not (base.is_file() and monitored.is_file()):
        return
    a, b = yaml.safe_load(base.read_text()), yaml.safe_load(monitored.read_text())
    a.pop("listen", None), b.pop("listen", None)
    report.check(a == b, "kubernetes: podmonitor/config.yaml equals base/config.yaml but for listen",
                 "the two configurations drifted apart")


def section_kubernetes(report: Report, deploy: Path) -> None:
    kubernetes_dir = deploy / "kubernetes"
    _, utils = _kubernetes_validate()
    from kubernetes_validate.version import __version__ as validator_version
    report.note(f"kubernetes-validate {validator_version}: Kubernetes {', '.join(KUBERNETES_VERSIONS)} schemas, strict")
    try:
        versions = run([find_tool("kubectl"), "version", "--client"]).stdout.strip().splitlines()
        report.note("kubectl kustomize: " + "; ".join(versions))
    except ToolMissing:
        pass
    daemonset_ports: set[int] = set()

    # 1. Every object file, as written.
    for path in sorted(kubernetes_dir.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        documents = load_documents(path)
        objects = [doc for doc in documents if is_kubernetes_object(doc)]
        if not objects:
            continue   # an agent configuration (config.yaml): loaded by the agent in the integration tests
        for doc in objects:
            validate_object(report, doc, str(path.relative_to(deploy.parent)))

    # 2. What each kustomization builds.
    for path in kustomization_files(kubernetes_dir):
        check_kustomization_references(report, path, deploy)
    for directory in kustomize_entry_points(kubernetes_dir):
        where = str(directory.relative_to(deploy.parent))
        try:
            built = kustomize_build(directory)
        except RuntimeError as error:
            report.fail(f"{where}: kubectl kustomize builds", str(error))
            continue
        if built is None:
            report.note(f"{where}: kubectl not installed: kustomize build not checked (files checked one by one)")
            continue
        report.ok(f"{where}: kubectl kustomize builds ({len(built)} objects)")
        for doc in built:
            validate_object(report, doc, f"{where} (built)")
        check_daemonset(report, f"{where} (built)", built)
        for doc in built:
            if doc["kind"] == "DaemonSet":
                for container in doc["spec"]["template"]["spec"].get("containers") or []:
                    daemonset_ports |= {p["containerPort"] for p in container.get("ports") or []}

    if not daemonset_ports:   # no kubectl: take the port from the DaemonSet file itself
        for doc in load_documents(kubernetes_dir / "base" / "daemonset.yaml"):
            for container in doc["spec"]["template"]["spec"].get("containers") or []:
                daemonset_ports |= {p["containerPort"] for p in container.get("ports") or []}

    check_configs_in_step(report, kubernetes_dir)
    for path in sorted((kubernetes_dir / "sidecar").glob("*.yaml")):
        check_sidecar(report, path, deploy, daemonset_ports)


# ---------------------------------------------------------------------------------------------
# systemd


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections -> [(key, value)], keeping repeated keys in order; line continuations joined."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    text = re.sub(r"\\\n", " ", text)
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif "=" in line and current is not None:
            key, value = line.split("=", 1)
            current.append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict, section: str, key: str) -> list[str]:
    return [value for k, value in unit.get(section, []) if k == key]


def yes(values: list[str]) -> bool:
    return bool(values) and values[-1].lower() in ("yes", "true", "1", "on")


def make_unit_root(unit_path: Path, binary: str | None) -> tempfile.TemporaryDirectory:
    """A throwaway root for `systemd-analyze verify --root`: the host's unit files, the unit under
    test, and its ExecStart/ExecReload executables at the paths the unit names."""
    holder = tempfile.TemporaryDirectory(prefix="conn-reaper-unit-root-")
    root = Path(holder.name)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(unit_path, root / "etc/systemd/system" / unit_path.name)
    for name in ("bin", "sbin", "lib", "lib64"):
        (root / name).symlink_to(f"usr/{name}")
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/sbin").mkdir(parents=True, exist_ok=True)
    unit = parse_unit(unit_path.read_text())
    for key in ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop", "ExecStopPost"):
        for command in unit_values(unit, "Service", key):
            executable = command.lstrip("-@:+!").split()[0]
            if not executable.startswith("/"):
                continue
            target = root / executable.lstrip("/")
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = binary if executable.endswith("/conn-reaper") and binary else shutil.which(Path(executable).name)
            if source and os.path.isfile(source):
                shutil.copy(source, target)
            else:
                target.write_text("#!/bin/sh\nexit 0\n")
            target.chmod(0o755)
    return holder


def section_systemd(report: Report, deploy: Path) -> None:
    unit_path = deploy / "systemd" / "conn-reaper.service"
    analyze = find_tool("systemd-analyze")
    report.note(tool_version([analyze, "--version"]))
    if not report.check(unit_path.is_file(), f"{unit_path.relative_to(deploy.parent)} exists"):
        return
    binary = os.environ.get("CONN_REAPER") or str(REPO / ".build" / "debug" / "conn-reaper")
    with make_unit_root(unit_path, binary if os.path.isfile(binary) else None) as root:
        name = unit_path.name
        verify = run([analyze, "verify", f"--root={root}", "--man=no", name])
        output = (verify.stdout + verify.stderr).strip()
        report.check(verify.returncode == 0 and not output,
                     "systemd-analyze verify reports nothing", f"exit {verify.returncode}: {output}")
        security = run([analyze, "security", "--offline=yes", f"--root={root}", "--no-pager", name])
        match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\S+)", security.stdout + security.stderr)
        if report.check(match is not None, "systemd-analyze security scores the unit",
                        (security.stdout + security.stderr)[-500:]):
            score = float(match.group(1))
            # Held back by what the job needs: CAP_NET_ADMIN, the host's network, the host's users.
            report.check(score <= 3.0, f"systemd-analyze security exposure {score} {match.group(2)} is at most 3.0")

    unit = parse_unit(unit_path.read_text())
    service = lambda key: unit_values(unit, "Service", key)  # noqa: E731
    report.check(yes(service("DynamicUser")) or any(v not in ("root", "0") for v in service("User")),
                 "runs as a dynamic or dedicated non-root user")
    report.check(service("AmbientCapabilities")[-1:] == ["CAP_NET_ADMIN"], "AmbientCapabilities=CAP_NET_ADMIN",
                 str(service("AmbientCapabilities")))
    report.check(service("CapabilityBoundingSet")[-1:] == ["CAP_NET_ADMIN"],
                 "CapabilityBoundingSet=CAP_NET_ADMIN (matches the ambient set)", str(service("CapabilityBoundingSet")))
    report.check(yes(service("NoNewPrivileges")), "NoNewPrivileges=yes")
    report.check(service("ProtectSystem")[-1:] == ["strict"], "ProtectSystem=strict")
    families = " ".join(service("RestrictAddressFamilies")).split()
    report.check("AF_NETLINK" in families and not any(f.startswith("~") for f in families),
                 "RestrictAddressFamilies allows AF_NETLINK (sock_diag, ctnetlink)", " ".join(families))
    report.check(not yes(service("PrivateNetwork")), "no PrivateNetwork (it must see the host's sockets)")
    report.check(not yes(service("PrivateUsers")), "no PrivateUsers (CAP_NET_ADMIN must count in the host's namespace)")
    report.check(not service("NetworkNamespacePath") and not unit_values(unit, "Unit", "JoinsNamespaceOf"),
                 "joins no other network namespace")
    for key in ("ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
                "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname", "RestrictNamespaces",
                "RestrictSUIDSGID", "LockPersonality", "MemoryDenyWriteExecute", "RestrictRealtime"):
        report.check(yes(service(key)), f"{key}=yes")
    exec_start = service("ExecStart")
    report.check(exec_start[-1:] and exec_start[-1].split()[0] == "/usr/local/bin/conn-reaper",
                 "ExecStart runs /usr/local/bin/conn-reaper", str(exec_start))
    config = flag_value(exec_start[-1].split(), "--config") if exec_start else None
    sample = deploy / "systemd" / Path(config or "x").name
    report.check(bool(config) and config.startswith("/etc/") and sample.is_file(),
                 f"--config {config} is under /etc and ships as {sample.relative_to(deploy.parent)}")


# ---------------------------------------------------------------------------------------------
# Container image


def section_container(report: Report, deploy: Path) -> None:
    dockerfile = deploy / "container" / "Dockerfile"
    hadolint = find_tool("hadolint")
    report.note(tool_version([hadolint, "--version"]))
    result = run([hadolint, "--no-color", str(dockerfile)])
    report.check(result.returncode == 0 and not result.stdout.strip(),
                 f"hadolint finds nothing in {dockerfile.relative_to(deploy.parent)}",
                 (result.stdout + result.stderr).strip())
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    stages = [re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), image)
              for image in re.findall(r"^FROM\s+(\S+)", text, re.M | re.I)]
    report.check(len(stages) >= 2, f"multi-stage: a build stage and a run stage ({' -> '.join(stages)})")
    report.check(re.search(r"swift build[^\n]*-c release[^\n]*--static-swift-stdlib", text) is not None,
                 "the build links the Swift standard library statically (--static-swift-stdlib)")
    last = text[text.rfind("\nFROM"):]
    report.check(all(pkg in last for pkg in ("libmnl0", "libnetfilter-conntrack3")),
                 "the run stage installs libmnl0 and libnetfilter-conntrack3")
    report.check(bool(stages) and "swift" not in stages[-1] and "slim" in stages[-1],
                 f"the run stage is a slim image, not the toolchain ({stages[-1] if stages else '?'})")
    report.check(re.search(r'^ENTRYPOINT \["/usr/local/bin/conn-reaper"\]', text, re.M) is not None,
                 "ENTRYPOINT is the binary, exec form")
    for source in re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", text, re.M):
        for item in source.split():
            if item.startswith("--"):
                continue
            matches = list(REPO.glob(item)) if any(ch in item for ch in "*?[") else [REPO / item]
            required = not any(ch in item for ch in "*?[")
            report.check(not required or all(m.exists() for m in matches), f"COPY source {item} exists in the repository")


# ---------------------------------------------------------------------------------------------
# Shell scripts


def shell_scripts(root: Path) -> list[Path]:
    result = run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard"])
    names = result.stdout.splitlines() if result.returncode == 0 else [
        str(p.relative_to(root)) for p in root.rglob("*") if ".build" not in p.parts and ".git" not in p.parts]
    scripts = []
    for name in names:
        path = root / name
        if not path.is_file() or path.suffix in (".py", ".swift", ".md", ".yaml", ".c", ".h"):
            continue
        if path.suffix in (".sh", ".bash"):
            scripts.append(path)
            continue
        try:
            with open(path, "rb") as handle:
                first = handle.readline(200)
        except OSError:
            continue
        if re.match(rb"#!\s*(/usr)?/bin/(env\s+)?(ba|da)?sh\b", first):
            scripts.append(path)
    return sorted(scripts)


def section_shell(report: Report, deploy: Path) -> None:
    shellcheck = find_tool("shellcheck")
    versions = [line for line in run([shellcheck, "--version"]).stdout.splitlines() if line.startswith("version")]
    report.note(f"shellcheck {versions[0] if versions else '?'}")
    root = deploy.parent
    scripts = shell_scripts(root)
    if not report.check(bool(scripts), "found shell scripts to check", f"none under {root}"):
        return
    for script in scripts:
        result = run([shellcheck, "--external-sources", "--format=gcc", str(script)], cwd=str(script.parent))
        report.check(result.returncode == 0, f"shellcheck {script.relative_to(root)}", result.stdout.strip())


# ---------------------------------------------------------------------------------------------
# Metrics


def section_metrics(report: Report, scrape: Path) -> None:
    promtool = find_tool("promtool")
    report.note(tool_version([promtool, "--version"]))
    text = scrape.read_text()
    if not report.check("# TYPE " in text, f"{scrape.name} is a Prometheus text exposition", text[:200]):
        return
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    report.check(result.returncode == 0 and not (result.stdout + result.stderr).strip(),
                 "promtool check metrics finds nothing", (result.stdout + result.stderr).strip())


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", metavar="SECTION",
                        help=f"any of {', '.join(STATIC_SECTIONS)} (default: all)")
    parser.add_argument("--deploy", type=Path, default=REPO / "Deploy", help="the Deploy directory to check")
    parser.add_argument("--metrics", type=Path, help="a /metrics scrape to run promtool on")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in STATIC_SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}: choose from {', '.join(STATIC_SECTIONS)}")
    sections = args.sections or ([] if args.metrics else list(STATIC_SECTIONS))
    report = Report()
    try:
        for section in sections:
            print(f"== {section}")
            globals()[f"section_{section}"](report, args.deploy.resolve())
        if args.metrics:
            print("== metrics")
            section_metrics(report, args.metrics)
    except ToolMissing as error:
        print(f"MISSING  {error}")
        return EXIT_TOOL_MISSING
    print(f"deploy checks: {report.passes} ok, {report.failures} failing")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
