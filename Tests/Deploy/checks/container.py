"""The container section: hadolint on the Dockerfile and its structure."""

from __future__ import annotations

import re
from pathlib import Path

from checks.report import Report, find_tool, run, tool_version

REPO = Path(__file__).resolve().parents[3]


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
