"""Credentials of the deployment modes (setpriv shapes), /proc status, files an unprivileged agent can
read, a throwaway CA: for the deployment and least-privilege tests (lab.agent runs an agent in a shape).
"""

from __future__ import annotations

import os
import subprocess
import tempfile

from lab.netns import tool

NOBODY = 65534
NET_ADMIN_BIT = 1 << 12

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
    setpriv = tool("setpriv")
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
