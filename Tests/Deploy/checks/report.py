"""What every section shares: the report of checks passed and failed, and how tools are found and run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig


class ToolMissing(Exception):
    pass


class Report:
    def __init__(self) -> None:
        self.failures = 0
        self.passes = 0

    def ok(self, what: str) -> None:
        self.passes += 1
        print(f"ok    {what}")

    def fail(self, what: str, detail: str = "") -> None:
        self.failures += 1
        print(f"FAIL  {what}" + (f": {detail}" if detail else ""))

    def check(self, condition: bool, what: str, detail: str = "") -> bool:
        if condition:
            self.ok(what)
        else:
            self.fail(what, detail)
        return bool(condition)

    def note(self, text: str) -> None:
        print(f"note  {text}")


def find_tool(name: str) -> str:
    """A tool on PATH, in this Python's scripts directory (pip installs there), or in an sbin."""
    found = shutil.which(name)
    if found:
        return found
    for directory in (sysconfig.get_path("scripts"), "/usr/sbin", "/sbin", "/usr/local/bin"):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    raise ToolMissing(f"'{name}' is not installed (make deps installs it)")


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, **kwargs)


def tool_version(argv: list[str]) -> str:
    result = run(argv)
    return (result.stdout or result.stderr).strip().splitlines()[0] if (result.stdout or result.stderr) else "?"


def flag_value(args: list[str], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None
