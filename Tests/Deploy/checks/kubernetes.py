"""The kubernetes section: every object strictly validated for each Kubernetes version, then the rules
the deployment follows."""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from pathlib import Path

from checks import version
from checks.report import Report, ToolMissing, find_tool, flag_value, run

KUBERNETES_VERSIONS = ("1.29", "1.33")

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
# The PrometheusRule (monitoring.coreos.com/v1), the same way: the fields our rules use, closed.
PROMETHEUSRULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": PODMONITOR_SCHEMA["properties"]["metadata"],
        "spec": {
            "type": "object", "required": ["groups"], "additionalProperties": False,
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "interval": {"type": "string", "pattern": DURATION},
                    "rules": {"type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                        "properties": {
                            "alert": {"type": "string", "minLength": 1},
                            "record": {"type": "string", "minLength": 1},
                            "expr": {"type": ["string", "integer"]},
                            "for": {"type": "string", "pattern": DURATION},
                            "keep_firing_for": {"type": "string", "pattern": DURATION},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                        }}},
                }}}},
        },
    },
}
CUSTOM_SCHEMAS = {("monitoring.coreos.com/v1", "PodMonitor"): PODMONITOR_SCHEMA,
                  ("monitoring.coreos.com/v1", "PrometheusRule"): PROMETHEUSRULE_SCHEMA}


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
    for kubernetes in KUBERNETES_VERSIONS:
        what = f"{where}: {object_name(doc)} validates strictly against Kubernetes {kubernetes}"
        try:
            utils.validate(doc, kubernetes, strict=True)
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
    expected_image = version.image()
    report.check(container.get("image") == expected_image,
                 f"{name} runs {expected_image} (registry-qualified, the one version)", str(container.get("image")))

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


def check_config_mode(report: Report, where: str, objects: list[dict], pod: dict, container: dict):
    """--config FILE from the ConfigMap's config.yaml; returns the agent's listen address, or None."""
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
        return None
    config = _yaml().safe_load(data[key])
    try:
        listen = parse_listen(config.get("listen", "127.0.0.1:9747"))
    except ValueError as error:
        report.fail(f"{where}: listen", str(error))
        return None
    check_reaper_container(report, f"{where}: DaemonSet", pod, container, listen)

    # TLS files named in the configuration must be mounted.
    for pool in config.get("pools") or []:
        tls = ((pool.get("probe") or {}).get("tls")) or {}
        for tls_key in ("ca_file", "cert_file", "key_file"):
            if tls.get(tls_key):
                report.check(mount_for(container, tls[tls_key]) is not None,
                             f"{where}: {tls_key} {tls[tls_key]} is on a mounted volume")

    return listen


def host_path_of(pod: dict, container: dict, path: str) -> tuple[dict | None, str | None, str | None]:
    """(the mount, the host file it shows, the hostPath type) for a file path in the container."""
    mount = mount_for(container, path)
    volume = next((v for v in pod.get("volumes") or [] if mount and v["name"] == mount["name"]), None)
    host = (volume or {}).get("hostPath") or {}
    if not (mount and host.get("path")):
        return mount, None, None
    relative = os.path.relpath(path, mount["mountPath"])
    return mount, os.path.normpath(os.path.join(host["path"], relative)), host.get("type")


def excludes_control_plane(pod: dict) -> bool:
    """Required node affinity: every term demands node-role.kubernetes.io/control-plane DoesNotExist."""
    terms = (((pod.get("affinity") or {}).get("nodeAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or {}).get("nodeSelectorTerms") or []
    return bool(terms) and all(
        any(e.get("key") == "node-role.kubernetes.io/control-plane" and e.get("operator") == "DoesNotExist"
            for e in term.get("matchExpressions") or []) for term in terms)


def check_nginx_mode(report: Report, where: str, objects: list[dict], pod: dict, container: dict,
                     kubernetes_dir: Path):
    """--nginx-conf from the host (kubespray's overlay); returns the agent's listen address, or None."""
    args = container.get("args") or []
    nginx_conf, upstream = flag_value(args, "--nginx-conf"), flag_value(args, "--upstream")
    mount, host_file, host_type = host_path_of(pod, container, nginx_conf)
    report.check(host_file == "/etc/nginx/nginx.conf" and (mount or {}).get("readOnly") is True
                 and host_type == "Directory" and mount["mountPath"] != nginx_conf,
                 f"{where}: --nginx-conf {nginx_conf} is the host's /etc/nginx/nginx.conf, read-only, through "
                 "its directory (kubespray writes the file anew: a file mount would keep the old one)",
                 f"mount {mount}, host file {host_file}, type {host_type}")
    example = kubernetes_dir / "sidecar" / "nginx.conf"
    report.check(bool(upstream) and example.is_file() and re.search(
        rf"^\s*upstream\s+{re.escape(upstream)}\s*{{", example.read_text(), re.M) is not None,
                 f"{where}: --upstream {upstream} is an upstream block of kubespray's nginx.conf (sidecar/nginx.conf)")
    ca = flag_value(args, "--tls-ca")
    mount, host_file, host_type = host_path_of(pod, container, ca or "")
    report.check(flag_value(args, "--probe") == "https" and host_file == "/etc/kubernetes/ssl/ca.crt"
                 and (mount or {}).get("readOnly") is True and host_type == "File",
                 f"{where}: probes over https with kubespray's cluster CA (host file /etc/kubernetes/ssl/ca.crt, "
                 "read-only, that file only)", f"--probe {flag_value(args, '--probe')}, --tls-ca {ca}: {mount}, {host_file}")
    for mount in container.get("volumeMounts") or []:
        report.check(mount.get("readOnly") is True, f"{where}: volume {mount['name']} is mounted read-only")
    report.check(excludes_control_plane(pod),
                 f"{where}: runs only on nodes without node-role.kubernetes.io/control-plane (kubespray's nginx-proxy nodes)",
                 str(pod.get("affinity")))
    report.check(not [d for d in objects if d["kind"] == "ConfigMap"],
                 f"{where}: no ConfigMap (the backends come from nginx.conf; an unused configuration misleads)")
    sidecar_file = kubernetes_dir / "sidecar" / "nginx-proxy.yaml"
    if sidecar_file.is_file():
        pod_doc = next((d for d in load_documents(sidecar_file) if d.get("kind") == "Pod"), {})
        sidecar = next((c for c in (pod_doc.get("spec") or {}).get("initContainers") or []
                        if c["name"] == "conn-reaper"), {})
        mine = [a for a in args if not a.startswith("--listen")]
        theirs = [a for a in sidecar.get("args") or [] if not a.startswith("--listen")]
        report.check(mine == theirs, f"{where}: its command line is the native sidecar's but for --listen",
                     f"{mine} vs {theirs}")
    try:
        return parse_listen(flag_value(args, "--listen") or "127.0.0.1:9747")
    except ValueError as error:
        report.fail(f"{where}: --listen", str(error))
        return None


def check_daemonset(report: Report, where: str, objects: list[dict], kubernetes_dir: Path) -> None:
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

    args = container.get("args") or []
    if flag_value(args, "--nginx-conf"):
        listen = check_nginx_mode(report, where, objects, pod, container, kubernetes_dir)
        if listen is None:
            return
        check_reaper_container(report, f"{where}: DaemonSet", pod, container, listen)
    else:
        listen = check_config_mode(report, where, objects, pod, container)
        if listen is None:
            return

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


def check_monitoring_objects(report: Report, where: str, objects: list[dict]) -> None:
    """The monitoring kustomization: alerts and a dashboard, no workload. The rules themselves are the
    monitoring section's (promtool)."""
    kinds = sorted(doc["kind"] for doc in objects)
    report.check(kinds == ["ConfigMap", "PrometheusRule"], f"{where}: a PrometheusRule and a dashboard ConfigMap only",
                 str(kinds))
    report.check(all((doc.get("metadata") or {}).get("namespace") == "kube-system" for doc in objects),
                 f"{where}: every object is in kube-system, beside the agents")
    for configmap in (doc for doc in objects if doc["kind"] == "ConfigMap"):
        labels = configmap["metadata"].get("labels") or {}
        data = configmap.get("data") or {}
        report.check(labels.get("grafana_dashboard") == "1" and any(key.endswith(".json") for key in data),
                     f"{where}: ConfigMap {configmap['metadata']['name']} is a dashboard for Grafana's sidecar "
                     "(label grafana_dashboard: \"1\", a .json key)", f"labels {labels}, keys {sorted(data)}")


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
        if any(doc["kind"] == "PrometheusRule" for doc in built):
            check_monitoring_objects(report, f"{where} (built)", built)
        else:
            check_daemonset(report, f"{where} (built)", built, kubernetes_dir)
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
