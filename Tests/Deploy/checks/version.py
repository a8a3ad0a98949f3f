"""The version section: the one version, ConnReaperVersion.current in Sources/Reaper/Version.swift, is
what every file that must carry a copy of it says (the kustomize image tag, the Dockerfile's default,
the static pod's image, the README examples), so a bump that forgets one fails here."""

from __future__ import annotations

import re
from pathlib import Path

from checks.report import Report

REPO = Path(__file__).resolve().parents[3]
VERSION_SWIFT = REPO / "Sources" / "Reaper" / "Version.swift"
# The image's registry-qualified name: what `make image` pushes and every manifest runs, tagged with
# the one version.
IMAGE = "ghcr.io/conn-reaper/conn-reaper"

# An image reference to conn-reaper with a tag: `conn-reaper:0.1.0`, `ghcr.io/conn-reaper/conn-reaper:0.1.0`.
# Not `conn-reaper:dev` style examples, which carry no version.
IMAGE_TAG = re.compile(r"\bconn-reaper:(v?\d+\.\d+\.\d+\S*?)(?=[\s\"'`)\],]|$)", re.M)


def one_version() -> str:
    match = re.search(r'static\s+let\s+current\s*=\s*"([^"]+)"', VERSION_SWIFT.read_text())
    if not match:
        raise RuntimeError(f"no `static let current = \"...\"` in {VERSION_SWIFT}")
    return match.group(1)


def image() -> str:
    return f"{IMAGE}:{one_version()}"


def text_files(deploy: Path) -> list[Path]:
    return sorted(p for p in deploy.rglob("*") if p.is_file() and p.suffix in ("", ".md", ".yaml", ".yml", ".json", ".conf")
                  or p.name == "Dockerfile")


def section_version(report: Report, deploy: Path) -> None:
    version = one_version()
    report.note(f"the one version: {version} ({VERSION_SWIFT.relative_to(REPO)})")
    import yaml
    tags = 0
    for path in sorted((deploy / "kubernetes").rglob("kustomization.yaml")):
        for image in (yaml.safe_load(path.read_text()) or {}).get("images") or []:
            tags += 1
            report.check(str(image.get("newTag")) == version,
                         f"{path.relative_to(deploy.parent)}: image {image.get('name')} newTag is {version}",
                         f"newTag {image.get('newTag')}")
    report.check(tags > 0, "a kustomization sets the image tag (newTag)")

    dockerfile = deploy / "container" / "Dockerfile"
    defaults = re.findall(r"^ARG\s+VERSION=(\S+)", dockerfile.read_text(), re.M)
    report.check(defaults == [version], f"{dockerfile.relative_to(deploy.parent)}: ARG VERSION={version}, once",
                 f"found {defaults}")
    label = re.search(r'org\.opencontainers\.image\.version="([^"]*)"', dockerfile.read_text())
    report.check(label is not None and label.group(1) == "${VERSION}",
                 "the image's version label is the VERSION build argument", label.group(0) if label else "no label")

    # Every image reference with a version, in Deploy/ and the top-level README.
    files = text_files(deploy) + [REPO / "README.md"]
    for path in files:
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for found in IMAGE_TAG.findall(line):
                where = path.relative_to(deploy.parent) if path.is_relative_to(deploy.parent) else path.name
                report.check(found == version, f"{where}:{number}: conn-reaper:{found} is the one version",
                             f"expected conn-reaper:{version}")
