#!/usr/bin/env python3
"""Every module a target imports is one it declares in Package.swift (a target or a product of a
dependency), or one the toolchain ships; every project target it declares, it imports. SwiftPM's --explicit-target-dependency-import-check accepts
a module that is only a dependency's dependency; this check does not, and it also refuses an import
of a project target from a layer below it (Package.swift's layer comment gives the order).

Usage: check_imports.py [PACKAGE_DIR]   (runs `swift package dump-package`; exit 1 on a finding)"""

import json
import re
import subprocess
import sys
from pathlib import Path

TOOLCHAIN = {"Foundation", "FoundationEssentials", "Glibc", "Dispatch", "Synchronization", "Testing", "XCTest",
             "_Concurrency", "Darwin", "Musl"}
IMPORT = re.compile(r"^\s*(?:@testable\s+|@_exported\s+)?import\s+(?:(?:struct|class|enum|func|protocol)\s+)?([A-Za-z_][A-Za-z0-9_]*)",
                    re.M)


def module_name(name: str) -> str:
    """The module a target builds: `conn-reaper` is imported (by its tests) as `conn_reaper`."""
    return name.replace("-", "_")


def declared(target: dict) -> set[str]:
    names = set()
    for dependency in target.get("dependencies", []):
        for kind in ("byName", "target", "product"):
            if kind in dependency:
                names.add(dependency[kind][0])
    return names


def imports(directory: Path) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in sorted(directory.rglob("*.swift")):
        for module in IMPORT.findall(path.read_text()):
            found.setdefault(module, set()).add(str(path))
    return found


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve()
    package = json.loads(subprocess.run(["swift", "package", "dump-package"], cwd=root, check=True,
                                         capture_output=True, text=True).stdout)
    targets = {target["name"]: target for target in package["targets"]}
    problems = []
    for name, target in targets.items():
        if target["type"] == "system":
            continue
        base = "Tests" if target["type"] == "test" else "Sources"
        directory = root / (target.get("path") or f"{base}/{name}")
        allowed = {module_name(dependency) for dependency in declared(target)} | TOOLCHAIN | {module_name(name)}
        found = imports(directory)
        for module, files in found.items():
            if module not in allowed:
                problems.append(f"{name} imports {module} without declaring it ({', '.join(sorted(files))})")
        # A project target declared and never imported is a layer it does not use: say so too.
        for dependency in declared(target):
            if dependency in targets and targets[dependency]["type"] != "system" and module_name(dependency) not in found:
                problems.append(f"{name} declares {dependency} and never imports it")
    # A layer imports only layers below it: no cycle through the declarations either.
    order = {}      # target -> its layer (the line of Package.swift's layer comment naming it)
    for level, line in enumerate((root / "Package.swift").read_text().splitlines()):
        match = re.match(r"//\s+(\S.*?)\s{2,}", line)
        if match:
            for name in re.split(r",\s*", match.group(1)):
                order.setdefault(name.strip(), level)
    for name, target in targets.items():
        if target["type"] == "test" or name not in order:
            continue
        for dependency in declared(target):
            if dependency in order and order[dependency] >= order[name]:
                problems.append(f"{name} depends on {dependency}, which is not a layer below it")
    for problem in problems:
        print(f"check_imports: {problem}")
    print(f"check_imports: {len(targets)} targets, {len(problems)} findings")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
