"""The shell section: shellcheck on every shell script in the repository."""

from __future__ import annotations

import re
from pathlib import Path

from checks.report import Report, find_tool, run


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
