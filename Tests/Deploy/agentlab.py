"""Helpers for the deployment tests: credential shapes (setpriv), a running agent inside a lab
namespace, its HTTP endpoints, a throwaway CA. Used by Tests/Integration/test_deploy_checks.py and
test_least_privilege.py together with netlab's Lab (Tests/Integration/netlab.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import netlab

NOBODY = 65534
NET_ADMIN_BIT = 1 << 12
CHECK_SCRIPT = Path(__file__).resolve().parent / "check_deploy.py"

# How each deployment mode hands the binary its privilege, reproduced with setpriv:
#  systemd:     a non-root (dynamic) user, AmbientCapabilities=CAP_NET_ADMIN, bounding set to match,
#               NoNewPrivileges=yes.
#  kubernetes:  UID 0, capabilities drop ALL + add NET_ADMIN (bounding = permitted = NET_ADMIN),
#               allowPrivilegeEscalation: false (no_new_privs).
SHAPES = {
    "systemd": [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all,+net_admin",
                "--ambient-caps=-all,+net_admin", "--bounding-set=-all,+net_admin", "--no-new-privs"],
    "kubernetes": ["--inh-caps=-all", "--bounding-set=-all,+net_admin", "--no-new-privs"],
    "nobody-no-capabilities": [f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all",
                               "--bounding-set=-all", "--no-new-privs"],
    "root-without-net-admin": ["--inh-caps=-all", "--bounding-set=-net_admin", "--no-new-privs"],
}


def wrapper(shape: str) -> list[str]:
    setpriv = netlab.tool("setpriv")
    if setpriv is None:
        raise AssertionError("setpriv (util-linux) is missing")
    return [setpriv, *SHAPES[shape]]


def proc_status(pid: int | str = "self") -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def world_readable_dir(prefix: str) -> str:
    """A temp dir that `nobody` can read (configs, CA files for an agent run under setpriv)."""
    directory = tempfile.mkdtemp(prefix=prefix)
    os.chmod(directory, 0o755)
    return directory


def write_file(directory: str, name: str, text: str) -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o644)
    return path


def make_ca(directory: str) -> str:
    """A self-signed CA certificate (PEM), for configurations that name a ca_file."""
    key, cert = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.crt")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-subj", "/CN=conn-reaper test CA", "-days", "1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=30)
    os.chmod(cert, 0o644)
    return cert


class Agent:
    """`conn-reaper run ...` inside a lab namespace, its output in a file. The lab stops it at the
    latest when it closes; stop() stops it gracefully and returns the exit status."""

    def __init__(self, namespace, binary: str, args: list[str], *, shape: str | None = None,
                 listen: str = "127.0.0.1:9747") -> None:
        self.namespace = namespace
        self.listen = listen
        self.log_file = tempfile.NamedTemporaryFile(prefix="conn-reaper-agent-", suffix=".log", delete=False)
        argv = [*(wrapper(shape) if shape else []), binary, "run", *args]
        self.argv = argv
        self.process = namespace.popen(argv, stdout=self.log_file, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)

    # -- output ----------------------------------------------------------------------------

    def log(self) -> str:
        with open(self.log_file.name, errors="replace") as handle:
            return handle.read()

    def describe(self) -> str:
        return f"`{' '.join(map(str, self.argv))}` (exit {self.process.poll()})\n--- log ---\n{self.log()[-6000:]}"

    def wait_log(self, pattern: str, timeout: float = 15) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, self.log(), re.M)
            if match:
                return match
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no log line matching {pattern!r} within {timeout}s: {self.describe()}")

    # -- HTTP, from inside the namespace -----------------------------------------------------

    def get(self, path: str) -> tuple[int, str]:
        host, port = self.listen.rsplit(":", 1)
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        result = self.namespace.run(["curl", "-sS", "--max-time", "3", "-o", "-", "-w", "\n%{http_code}",
                                     f"http://{host}:{port}{path}"], check=False, timeout=10)
        body, _, code = result.stdout.rpartition("\n")
        return (int(code) if code.isdigit() else 0), body

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        status = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the agent exited before it was ready: {self.describe()}")
            status, _ = self.get("/readyz")
            if status == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"/readyz did not answer 200 within {timeout}s (last {status}): {self.describe()}")

    def status(self) -> dict:
        code, body = self.get("/status")
        assert code == 200, f"/status answered {code}: {body}"
        return json.loads(body)

    def metrics(self) -> str:
        code, body = self.get("/metrics")
        assert code == 200, f"/metrics answered {code}: {body}"
        return body

    # -- lifetime ----------------------------------------------------------------------------

    def stop(self, timeout: float = 10) -> int:
        if not netlab.stop_child(self.process, grace=timeout):
            raise AssertionError(f"the agent ignored SIGTERM for {timeout}s: {self.describe()}")
        return self.process.returncode

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.log_file.close()
        try:
            os.unlink(self.log_file.name)
        except OSError:
            pass


def metric_samples(text: str, name: str) -> list[tuple[dict, float]]:
    """Samples of one metric in a Prometheus text exposition: [(labels, value)]."""
    return netlab.Metrics(text).matching(name)


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples whose labels include ``labels``; None when there is none."""
    metrics = netlab.Metrics(text)
    return metrics.value(name, **labels) if metrics.has(name, **labels) else None


def metric_families(text: str) -> set[str]:
    return netlab.Metrics(text).families()
