"""Health probes against real servers: https with a private CA, SNI and a client certificate (what
kube-apiserver's /readyz needs), http status checks, and a peer that accepts and never answers.

Each test runs a server and the agent in one throwaway namespace and reads the agent's /status."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from lab import kernel

SERVER = textwrap.dedent("""
    import http.server, socket, ssl, sys
    mode, port = sys.argv[1], int(sys.argv[2])
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/silent":
                import time; time.sleep(30)
            code = 200 if self.path == "/readyz" else 500
            self.send_response(code); self.send_header("Content-Length", "2"); self.end_headers()
            self.wfile.write(b"ok")
        def log_message(self, *args): pass
    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if mode == "http6" else socket.AF_INET
    server = Server(("::1" if mode == "http6" else "127.0.0.1", port), Handler)
    if mode == "https":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[3], sys.argv[4])
        context.load_verify_locations(sys.argv[5])
        context.verify_mode = ssl.CERT_REQUIRED          # like kube-apiserver with client auth
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()
""")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for the name 'kubernetes', and a client certificate."""
    directory = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=directory)
    for name, extension in (("server", "subjectAltName=DNS:kubernetes"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                "-out", f"{name}.csr", cwd=directory)
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=directory)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other-ca",
            "-keyout", "other.key", "-out", "other.crt", cwd=directory)
    return directory


def start_server(namespace, tmp_path: Path, mode: str, port: int, pki: Path | None = None):
    script = tmp_path / "server.py"
    script.write_text(SERVER)
    argv = ["python3", str(script), mode, str(port)]
    if pki is not None:
        argv += [str(pki / "server.crt"), str(pki / "server.key"), str(pki / "ca.crt")]
    process = namespace.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready", process.stderr.read()
    return process


def run_agent(namespace, binary: str, tmp_path: Path, probe: dict, backend: str, listen_port: int):
    config = {
        "listen": f"127.0.0.1:{listen_port}",
        "pools": [{"name": "p", "backends": [backend],
                   "probe": {"interval": "200ms", "timeout": "150ms", "rise": 1, "fall": 1, **probe}}],
    }
    path = tmp_path / "agent.yaml"
    path.write_text(json.dumps(config))   # JSON is YAML
    return namespace.popen([binary, "run", "--config", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def backend_state(namespace, listen_port: int, want: str, within: float = 4.0) -> dict:
    """Polls /status until the backend reaches `want`; returns the backend's status either way."""
    deadline = time.monotonic() + within
    backend = {}
    while time.monotonic() < deadline:
        result = namespace.run(["curl", "-s", f"http://127.0.0.1:{listen_port}/status"], check=False)
        if result.returncode == 0 and result.stdout.strip():
            backend = json.loads(result.stdout)["pools"][0]["backends"][0]
            if backend["state"] == want:
                return backend
        time.sleep(0.1)
    return backend


CASES = {
    "ca-sni-client-cert": ({"type": "https", "path": "/readyz", "tls": {"ca_file": "ca.crt", "cert_file": "client.crt",
                                                                        "key_file": "client.key", "server_name": "kubernetes"}}, "up"),
    "insecure-skip-verify": ({"type": "https", "path": "/readyz", "tls": {"cert_file": "client.crt", "key_file": "client.key",
                                                                          "insecure_skip_verify": True}}, "up"),
    "no-client-cert": ({"type": "https", "path": "/readyz", "tls": {"ca_file": "ca.crt", "server_name": "kubernetes"}}, "unhealthy"),
    "wrong-ca": ({"type": "https", "path": "/readyz", "tls": {"ca_file": "other.crt", "cert_file": "client.crt",
                                                             "key_file": "client.key", "server_name": "kubernetes"}}, "unhealthy"),
    "wrong-server-name": ({"type": "https", "path": "/readyz", "tls": {"ca_file": "ca.crt", "cert_file": "client.crt",
                                                                       "key_file": "client.key", "server_name": "etcd"}}, "unhealthy"),
    "unexpected-status": ({"type": "https", "path": "/healthz", "tls": {"ca_file": "ca.crt", "cert_file": "client.crt",
                                                                        "key_file": "client.key", "server_name": "kubernetes"}}, "unhealthy"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_https_probe(case, lab, reaper_binary, pki, tmp_path):
    probe, expected = CASES[case]
    tls = {key: (str(pki / value) if key.endswith("_file") else value) for key, value in probe["tls"].items()}
    namespace = lab.namespace("tls")
    start_server(namespace, tmp_path, "https", 6443, pki)
    agent = run_agent(namespace, reaper_binary, tmp_path, {**probe, "tls": tls}, "127.0.0.1:6443", 9747)
    backend = backend_state(namespace, 9747, expected)
    assert agent.poll() is None, agent.stderr.read()
    assert backend.get("state") == expected, backend
    if expected == "up":
        assert backend["last_probe"] == "HTTP 200"
    else:
        # TLS failed or the status was wrong after the connection was up: something answers, not dead.
        assert backend["last_failure"] == "unhealthy", backend


@pytest.mark.parametrize("path,expect_status,expected,detail", [
    ("/readyz", [200], "up", "HTTP 200"),
    ("/other", [200], "unhealthy", "HTTP 500"),
    ("/other", [500, 503], "up", "HTTP 500"),
])
def test_http_probe_status(path, expect_status, expected, detail, lab, reaper_binary, tmp_path):
    namespace = lab.namespace("http")
    start_server(namespace, tmp_path, "http", 8080, None)
    run_agent(namespace, reaper_binary, tmp_path, {"type": "http", "path": path, "expect_status": expect_status},
              "127.0.0.1:8080", 9747)
    backend = backend_state(namespace, 9747, expected)
    assert backend.get("state") == expected, backend
    assert backend["last_probe"] == detail


def test_probe_of_a_silent_peer_fails_within_its_timeout(lab, reaper_binary, tmp_path):
    """A server that accepts and never answers must fail the probe by the timeout, not hang it."""
    namespace = lab.namespace("silent")
    start_server(namespace, tmp_path, "http", 8080, None)
    run_agent(namespace, reaper_binary, tmp_path, {"type": "http", "path": "/silent"}, "127.0.0.1:8080", 9747)
    backend = backend_state(namespace, 9747, "unhealthy")
    assert backend.get("state") == "unhealthy" and backend["last_failure"] == "unhealthy", backend
    kernel.speed_bound(backend["last_probe_seconds"], 0.3, "an HTTP probe's own time")


@pytest.mark.parametrize("probe,backend,expected,detail", [
    ({"type": "tcp"}, "[::1]:8080", "up", "connected"),
    ({"type": "tcp"}, "[::1]:8081", "dead", "connect: connection refused"),
    ({"type": "http", "path": "/readyz"}, "[::1]:8080", "up", "HTTP 200"),
    ({"type": "http", "path": "/other"}, "[::1]:8080", "unhealthy", "HTTP 500"),
])
def test_probes_over_ipv6(probe, backend, expected, detail, lab, reaper_binary, tmp_path):
    """tcp and http probes run on the agent's own probe thread: an IPv6 backend as well as IPv4."""
    namespace = lab.namespace("v6")
    start_server(namespace, tmp_path, "http6", 8080, None)
    run_agent(namespace, reaper_binary, tmp_path, probe, backend, 9747)
    state = backend_state(namespace, 9747, expected)
    assert state.get("state") == expected and state["last_probe"] == detail, state
    if expected != "up":
        assert state["last_failure"] == ("refused" if expected == "dead" else "unhealthy"), state


def test_tcp_probe_on_another_port(lab, reaper_binary, tmp_path):
    """probe.port: reap port 53's flows, judge health by another port (CoreDNS: UDP 53, HTTP 8181)."""
    namespace = lab.namespace("port")
    start_server(namespace, tmp_path, "http", 8181, None)
    run_agent(namespace, reaper_binary, tmp_path, {"type": "http", "port": 8181, "path": "/readyz"}, "127.0.0.1:53", 9747)
    backend = backend_state(namespace, 9747, "up")
    assert backend.get("state") == "up", backend
    assert backend["address"] == "127.0.0.1:53"
