#!/usr/bin/env python3
"""Runs each libFuzzer target for FUZZ_SECONDS (default 60) and prints a Markdown table of what
ran: executions, executions per second, corpus size, crashes. Exit 1 when any target crashed; the
crashing input is kept under SCRATCH/crashes/ and named in the output.

New inputs go to SCRATCH/corpus/<target> (the committed seeds in Tests/Fuzz/corpus/<target> are
read, never written), so a later run starts where the last one stopped.

Usage: run_fuzz.py SCRATCH [TARGET...]   (SCRATCH: the fuzz build's --scratch-path; env FUZZ_SECONDS)"""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "Tests/Fuzz/corpus"
# Which executable holds each target (FUZZ_TARGET picks it inside).
TARGETS = {
    "yaml": "FuzzConfig", "nginx": "FuzzConfig", "values": "FuzzConfig",
    "datagram": "FuzzNetlink", "sockdiag": "FuzzNetlink", "conntrack": "FuzzNetlink", "route": "FuzzNetlink",
}


def run(scratch: Path, target: str, seconds: int) -> dict:
    corpus = scratch / "corpus" / target
    crashes = scratch / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    command = [
        str(scratch / "debug" / TARGETS[target]), str(corpus), str(SEEDS / target),
        f"-max_total_time={seconds}", "-print_final_stats=1", "-timeout=10", "-rss_limit_mb=2048",
        f"-artifact_prefix={crashes}/{target}-",
    ]
    environment = dict(os.environ, FUZZ_TARGET=target)
    # Swift's runtime keeps metadata caches for the process's life: LeakSanitizer would call them leaks.
    environment.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    environment["SWIFT_BACKTRACE"] = "enable=no"  # libFuzzer prints the trace; Swift's backtracer would add a second
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=seconds + 300)
    log = result.stdout + result.stderr
    (scratch / f"fuzz-{target}.log").write_text(log)
    stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", log, re.M))
    artifact = re.search(r"Test unit written to (\S+)", log)
    return {
        "target": target, "crashed": result.returncode != 0, "runs": int(stats.get("number_of_executed_units", 0)),
        "per_second": int(stats.get("average_exec_per_sec", 0)), "corpus": len(list(corpus.iterdir())),
        "artifact": artifact.group(1) if artifact else None, "log": scratch / f"fuzz-{target}.log",
    }


def main() -> int:
    scratch = Path(sys.argv[1]).resolve()
    targets = sys.argv[2:] or list(TARGETS)
    seconds = int(os.environ.get("FUZZ_SECONDS", "60"))
    results = []
    for target in targets:
        result = run(scratch, target, seconds)
        results.append(result)
        verdict = f"CRASH, input {result['artifact']} (log {result['log']})" if result["crashed"] else "ok"
        print(f"fuzz {target}: {result['runs']} runs, {result['per_second']}/s, {verdict}", flush=True)
    print(f"\n| target | seconds | executions | executions/s | corpus | crashes |\n|---|---|---|---|---|---|")
    for result in results:
        print(f"| {result['target']} | {seconds} | {result['runs']} | {result['per_second']} | {result['corpus']} | "
              f"{1 if result['crashed'] else 0} |")
    return 1 if any(result["crashed"] for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
