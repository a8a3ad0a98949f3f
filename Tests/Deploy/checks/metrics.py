"""The metrics section: `promtool check metrics` on a real /metrics scrape."""

from __future__ import annotations

import subprocess
from pathlib import Path

from checks.report import Report, find_tool, tool_version


def section_metrics(report: Report, scrape: Path) -> None:
    promtool = find_tool("promtool")
    report.note(tool_version([promtool, "--version"]))
    text = scrape.read_text()
    if not report.check("# TYPE " in text, f"{scrape.name} is a Prometheus text exposition", text[:200]):
        return
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    report.check(result.returncode == 0 and not (result.stdout + result.stderr).strip(),
                 "promtool check metrics finds nothing", (result.stdout + result.stderr).strip())
