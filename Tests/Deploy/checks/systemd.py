"""The systemd section: `systemd-analyze verify` in a throwaway root, the security score, the unit's
hardening rules."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

from checks.report import Report, find_tool, flag_value, run, tool_version

REPO = Path(__file__).resolve().parents[3]


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
    report.check(exec_start[-1:] and exec_start[-1].split()[0] == "/usr/bin/conn-reaper",
                 "ExecStart runs /usr/bin/conn-reaper (where the .deb installs it)", str(exec_start))
    report.check(service("Type")[-1:] == ["notify"] and service("NotifyAccess")[-1:] == ["main"],
                 "Type=notify, NotifyAccess=main (READY=1 once the configuration is loaded and /metrics bound)")
    report.check(bool(service("WatchdogSec")) and service("WatchdogSec")[-1] not in ("0", "infinity"),
                 "WatchdogSec is set (the agent pings at half of it)", str(service("WatchdogSec")))
    report.check("AF_UNIX" in families, "RestrictAddressFamilies allows AF_UNIX (sd_notify)", " ".join(families))
    config = flag_value(exec_start[-1].split(), "--config") if exec_start else None
    sample = deploy / "systemd" / Path(config or "x").name
    report.check(bool(config) and config.startswith("/etc/") and sample.is_file(),
                 f"--config {config} is under /etc and ships as {sample.relative_to(deploy.parent)}")
