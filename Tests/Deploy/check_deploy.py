#!/usr/bin/env python3
"""Checks of conn-reaper's deployment files (Deploy/): schemas, linters, and the project's own rules.

    python3 Tests/Deploy/check_deploy.py                       # every static section
    python3 Tests/Deploy/check_deploy.py kubernetes systemd    # some sections
    python3 Tests/Deploy/check_deploy.py --metrics scrape.txt  # promtool on a real /metrics scrape
    python3 Tests/Deploy/check_deploy.py --deploy /tmp/copy/Deploy kubernetes   # another tree
    python3 Tests/Deploy/check_deploy.py --binary .build/debug/conn-reaper container

Sections:
  kubernetes  every object under Deploy/kubernetes, and what `kubectl kustomize` builds from each
              kustomization, validated strictly (unknown fields rejected) against the Kubernetes 1.29
              and 1.33 schemas (kubernetes-validate, offline); the PodMonitor, whose CRD schema is not
              among them, against a minimal schema of its own here; then the rules the issue sets
              (hostNetwork, NET_ADMIN only, probes, ports, priority, tolerations, no RBAC, ...).
  systemd     `systemd-analyze verify` in a throwaway root (the unit's ExecStart must exist, and the
              host's /usr/local/bin is never touched) must print nothing; `systemd-analyze security`
              scores it; the unit's hardening rules.
  container   hadolint on Deploy/container/Dockerfile (any finding fails), its structure, the shared
              libraries its run stage provides against the binary's NEEDED entries (minus what the
              static Swift stdlib provides; the binary: --binary, $CONN_REAPER or .build/), and the
              buildx command `make -n image` prints.
  version     every copy of the one version (Sources/Reaper/Version.swift) agrees with it.
  monitoring  the PrometheusRule under `promtool check rules` and `promtool test rules`
              (Tests/Deploy/monitoring/alerts-test.yaml); each alert's for, severity and runbook_url
              (a heading of Deploy/README.md); the rules and the Grafana dashboard use only metrics
              Deploy/README.md's "Metrics reference" lists.
  shell       shellcheck on every shell script in the repository.
  metrics     `promtool check metrics` on a scrape file given with --metrics.

Prints one line per check ("ok ..." or "FAIL ..."). Exit 0 when everything passed, 1 when something
failed, 3 when a tool is missing (`make deps` installs them).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from checks import container, kubernetes, metrics, monitoring, shell, systemd, version
from checks.report import Report, ToolMissing

sys.dont_write_bytecode = True

REPO = Path(__file__).resolve().parents[2]
STATIC_SECTIONS = ("kubernetes", "systemd", "container", "shell", "version", "monitoring")
EXIT_TOOL_MISSING = 3

SECTIONS = {
    "kubernetes": kubernetes.section_kubernetes,
    "systemd": systemd.section_systemd,
    "container": container.section_container,
    "shell": shell.section_shell,
    "version": version.section_version,
    "monitoring": monitoring.section_monitoring,
}


def default_binary() -> Path | None:
    """`make dist`'s static build (what the image builds too), else $CONN_REAPER (what the integration
    tests run), else a build in the checkout."""
    candidates = [str(REPO / ".build-dist" / "release" / "conn-reaper"), os.environ.get("CONN_REAPER", "")] + [
        str(REPO / ".build" / kind / "conn-reaper") for kind in ("release", "debug")]
    return next((Path(c) for c in candidates if c and os.access(c, os.X_OK)), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", metavar="SECTION",
                        help=f"any of {', '.join(STATIC_SECTIONS)} (default: all)")
    parser.add_argument("--deploy", type=Path, default=REPO / "Deploy", help="the Deploy directory to check")
    parser.add_argument("--metrics", type=Path, help="a /metrics scrape to run promtool on")
    parser.add_argument("--binary", type=Path, default=default_binary(),
                        help="the conn-reaper binary whose NEEDED libraries the image must provide")
    args = parser.parse_args(argv)
    unknown = [s for s in args.sections if s not in STATIC_SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}: choose from {', '.join(STATIC_SECTIONS)}")
    sections = args.sections or ([] if args.metrics else list(STATIC_SECTIONS))
    report = Report()
    try:
        for section in sections:
            print(f"== {section}")
            if section == "container":
                container.section_container(report, args.deploy.resolve(), args.binary)
            else:
                SECTIONS[section](report, args.deploy.resolve())
        if args.metrics:
            print("== metrics")
            metrics.section_metrics(report, args.metrics)
    except ToolMissing as error:
        print(f"MISSING  {error}")
        return EXIT_TOOL_MISSING
    print(f"deploy checks: {report.passes} ok, {report.failures} failing")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
