"""Which shared libraries a conn-reaper binary needs at run time, and which Debian package holds each.

CI builds the binary without --static-swift-stdlib (the image's build does), so its NEEDED entries
include the Swift runtime. The static build needs instead what those runtime libraries themselves
need (their NEEDED entries outside the Swift runtime: libstdc++, libm, libgcc_s, glibc): the static
archives are the same code. A library counts as Swift runtime when the loader finds it in the
toolchain's shared runtime directory (<toolchain>/usr/lib/swift/linux); that the toolchain also ships
its static archive (swift_static/linux/libNAME.a, what --static-swift-stdlib links in) is checked.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from checks.report import ToolMissing, find_tool, run


@dataclass
class Needs:
    """The run-time needs of a --static-swift-stdlib build, derived from any build of the binary."""
    required: dict[str, str] = field(default_factory=dict)   # soname -> resolved path on this host
    swift_runtime: list[str] = field(default_factory=list)   # NEEDED entries the static stdlib provides
    unresolved: list[str] = field(default_factory=list)      # sonames the loader did not find here
    no_static_archive: list[str] = field(default_factory=list)   # Swift libs without a .a: a static build fails


def needed(path: str) -> list[str]:
    """The NEEDED entries of an ELF file's dynamic section (`objdump -p`)."""
    result = run([find_tool("objdump"), "-p", path])
    if result.returncode != 0:
        raise RuntimeError(f"objdump -p {path}: {result.stderr.strip()}")
    return re.findall(r"^\s*NEEDED\s+(\S+)", result.stdout, re.M)


def loader_resolution(path: str) -> dict[str, str]:
    """soname -> path for the whole closure, as the dynamic loader resolves it (ldd)."""
    result = run([find_tool("ldd"), path])
    resolved = {}
    for line in result.stdout.splitlines():
        match = re.match(r"\s*(\S+)\s+=>\s+(\S+)", line)
        if match and match.group(2).startswith("/"):
            resolved[match.group(1)] = match.group(2)
        else:
            match = re.match(r"\s*(/\S+)\s+\(", line)   # the loader itself: /lib64/ld-linux-x86-64.so.2
            if match:
                resolved[os.path.basename(match.group(1))] = match.group(1)
    return resolved


def static_archive(soname: str, resolved_path: str) -> Path:
    """The toolchain's static archive for a Swift runtime library: .../swift/linux/libX.so ->
    .../swift_static/linux/libX.a."""
    directory = Path(resolved_path).resolve().parent      # <toolchain>/usr/lib/swift/linux
    stem = soname.split(".so")[0]
    return directory.parent.parent / "swift_static" / directory.name / f"{stem}.a"


def static_build_needs(binary: str) -> Needs:
    needs = Needs()
    resolved = loader_resolution(binary)

    def is_swift(path: str) -> bool:
        # The toolchain's shared runtime lives in <toolchain>/usr/lib/swift/linux.
        return Path(path).resolve().parent.parts[-2:] == ("swift", "linux")

    pending = needed(binary)
    seen: set[str] = set()
    while pending:
        soname = pending.pop(0)
        if soname in seen:
            continue
        seen.add(soname)
        path = resolved.get(soname)
        if path is None:
            needs.unresolved.append(soname)
            continue
        if is_swift(path):
            needs.swift_runtime.append(soname)
            if not static_archive(soname, path).exists():
                needs.no_static_archive.append(soname)
        else:
            needs.required[soname] = path
        # A Swift library linked in statically still needs its own non-Swift libraries; a system
        # library's needs are the loader's to meet in the image too.
        pending.extend(needed(path))
    return needs


def debian_package(path: str) -> str | None:
    """The Debian package that installed a library file (dpkg -S), across the /usr merge's aliases."""
    dpkg = find_tool("dpkg")
    candidates = []
    for candidate in (path, os.path.realpath(path)):
        candidates += [candidate, candidate.removeprefix("/usr") if candidate.startswith("/usr/") else "/usr" + candidate]
    for candidate in dict.fromkeys(candidates):
        result = run([dpkg, "-S", candidate])
        if result.returncode == 0:
            for line in result.stdout.splitlines():
                name, _, owned = line.partition(": ")
                if owned.strip() == candidate:
                    return name.split(":")[0]
    return None


def require_dpkg() -> None:
    find_tool("dpkg")
    if not Path("/var/lib/dpkg/status").exists():
        raise ToolMissing("no dpkg database: the image's base libraries are matched by Debian package")
