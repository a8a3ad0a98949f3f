"""The container section: hadolint on the Dockerfile, its structure, the shared libraries its run stage
provides against what the binary needs, and the multi-platform `make image` command."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from checks import sharedlibs, version
from checks.report import Report, find_tool, flag_value, run, tool_version

REPO = Path(__file__).resolve().parents[3]
PLATFORMS = {"linux/amd64", "linux/arm64"}

# What each run image provides, as Debian packages (its libraries are then those packages' files on
# this Debian 12 host, matched with dpkg -S). distroless' own lists: base/config.bzl (libc6, libssl3)
# and cc/config.bzl (libgcc-s1, libstdc++6, libgomp1, gcc-12-base), GoogleContainerTools/distroless.
RUN_IMAGE_PACKAGES = {
    "gcr.io/distroless/cc-debian12": {"libc6", "libssl3", "libgcc-s1", "libstdc++6", "libgomp1", "gcc-12-base"},
}
# Directories the dynamic loader searches on amd64 and arm64 alike (no ld.so.cache needed).
LOADER_DIRECTORIES = {"/usr/lib", "/lib"}


def dockerfile_stages(text: str) -> list[tuple[str, str]]:
    """(image with ARG defaults substituted, the stage's text) per FROM, line continuations joined."""
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text.split("\nFROM", 1)[0], re.M))
    parts = re.split(r"^(?=FROM\s)", text, flags=re.M | re.I)[1:]
    stages = []
    for part in parts:
        image = re.match(r"FROM\s+(?:--platform=\S+\s+)?(\S+)", part, re.I).group(1)
        stages.append((re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), image), part))
    return stages


def repository(image: str) -> str:
    """An image reference without its tag or digest: gcr.io/distroless/cc-debian12:nonroot -> ...cc-debian12."""
    return image.split("@")[0].rsplit(":", 1)[0] if ":" in image.split("@")[0].rsplit("/", 1)[-1] else image.split("@")[0]


def copied_libraries(stage: str) -> dict[str, str]:
    """soname -> destination directory for every shared library a stage COPYs from another stage."""
    libraries = {}
    for line in re.findall(r"^COPY\s+--from=\S+\s+(.+)$", stage, re.M):
        *sources, destination = line.split()
        for source in sources:
            name = source.rstrip("/").rsplit("/", 1)[-1]
            if re.search(r"\.so(\.\d+)*$", name):
                libraries[name] = destination.rstrip("/") or "/"
    return libraries


def staged_libraries(stage: str) -> list[str]:
    """The sonames the build stage's staging loop resolves and copies into /out/lib."""
    match = re.search(r"for soname in ([^;]+);", stage)
    return match.group(1).split() if match else []


def check_structure(report: Report, text: str) -> None:
    stages = dockerfile_stages(text)
    images = [image for image, _ in stages]
    report.check(len(stages) >= 2, f"multi-stage: a build stage and a run stage ({' -> '.join(images)})")
    report.check(re.search(r"swift build[^\n]*-c release[^\n]*--static-swift-stdlib", text) is not None,
                 "the build links the Swift standard library statically (--static-swift-stdlib)")
    if not stages:
        return
    run_image, run_stage = stages[-1]
    report.check(repository(run_image) in RUN_IMAGE_PACKAGES, f"the run stage is a minimal glibc image: {run_image}",
                 f"expected one of {sorted(RUN_IMAGE_PACKAGES)}")
    # No shell in the run image: a shell-form RUN would fail there, and apt-get is not there.
    shell_runs = [line for line in re.findall(r"^RUN\s+(.*)$", run_stage, re.M) if not line.startswith("[")]
    report.check(not shell_runs, "the run stage runs nothing through a shell (it has none)", str(shell_runs))
    report.check(re.search(r'^RUN \["/usr/local/bin/conn-reaper", "--version"\]', run_stage, re.M) is not None,
                 "the run stage executes conn-reaper --version (a missing library fails the build)")
    users = re.findall(r"^USER\s+(\S+)", run_stage, re.M)
    report.check(bool(users) and users[-1].split(":")[0] not in ("0", "root"),
                 f"the image's user is non-root ({users[-1] if users else 'none set: root'}); "
                 "the manifests set runAsUser: 0 where NET_ADMIN is needed", str(users))
    report.check(re.search(r'^ENTRYPOINT \["/usr/local/bin/conn-reaper"\]', run_stage, re.M) is not None,
                 "ENTRYPOINT is the binary, exec form")
    # One Dockerfile for linux/amd64 and linux/arm64: nothing in it may name one architecture.
    arch_specific = [line.strip() for line in text.splitlines() if not line.lstrip().startswith("#")
                     and re.search(r"x86_64|x86-64|amd64|aarch64|arm64", line)]
    report.check(not arch_specific, "no instruction names an architecture (the same file builds amd64 and arm64)",
                 str(arch_specific))
    copied = copied_libraries(run_stage)
    report.check(sorted(copied) == sorted(staged_libraries(stages[0][1] if len(stages) > 1 else "")),
                 "the run stage copies exactly the libraries the build stage staged",
                 f"COPY {sorted(copied)}, staged {staged_libraries(stages[0][1])}")
    for name, destination in sorted(copied.items()):
        report.check(destination in LOADER_DIRECTORIES,
                     f"{name} goes to {destination}, on the loader's default path on every architecture")
    for source in re.findall(r"^COPY\s+(?!--from)(.+?)\s+\S+$", text, re.M):
        for item in source.split():
            if item.startswith("--") or any(ch in item for ch in "*?["):
                continue
            report.check((REPO / item).exists(), f"COPY source {item} exists in the repository")


def check_libraries(report: Report, text: str, binary: Path | None) -> None:
    """The binary's run-time needs (NEEDED, minus the static Swift stdlib) against the run image."""
    if binary is None:
        report.note("no conn-reaper binary (--binary, $CONN_REAPER or .build/): NEEDED not compared with the image")
        return
    sharedlibs.require_dpkg()
    stages = dockerfile_stages(text)
    run_image, run_stage = stages[-1]
    base_packages = RUN_IMAGE_PACKAGES.get(repository(run_image), set())
    needs = sharedlibs.static_build_needs(str(binary))
    report.note(f"{binary}: the static Swift stdlib provides {', '.join(needs.swift_runtime) or 'nothing (already static)'}")
    report.check(not needs.unresolved, f"every library {binary.name} needs resolves here", str(needs.unresolved))
    report.check(not needs.no_static_archive,
                 "every Swift runtime library it links has a static archive (--static-swift-stdlib can link it in)",
                 str(needs.no_static_archive))
    from_base, must_copy = {}, set()
    for soname, path in sorted(needs.required.items()):
        package = sharedlibs.debian_package(path)
        if package in base_packages:
            from_base[soname] = package
        else:
            must_copy.add(soname)
    report.note("the run image provides " + ", ".join(f"{s} ({p})" for s, p in from_base.items()))
    copied = set(copied_libraries(run_stage))
    report.check(copied == must_copy,
                 f"the image copies exactly the libraries {binary.name} needs beyond {run_image}: "
                 f"{', '.join(sorted(must_copy))}",
                 f"missing {sorted(must_copy - copied)}, not needed {sorted(copied - must_copy)}")


def check_make_image(report: Report) -> None:
    """`make -n image`: the buildx command for both platforms, the registry name and the one version."""
    # The Makefile's own defaults, whatever the caller's environment says.
    environment = {k: v for k, v in os.environ.items() if k not in ("IMAGE", "PLATFORMS", "IMAGE_OUTPUT", "VERSION")}
    result = run([find_tool("make"), "-n", "-C", str(REPO), "--no-print-directory", "image"], env=environment)
    command = result.stdout.replace("\\\n", " ")
    if not report.check(result.returncode == 0 and "docker buildx build" in command,
                        "make -n image prints a docker buildx build", (result.stdout + result.stderr).strip()):
        return
    argv = shlex.split(command)
    platforms = set((flag_value(argv, "--platform") or "").split(","))
    report.check(platforms == PLATFORMS, f"make image builds for {', '.join(sorted(PLATFORMS))}", str(platforms))
    expected = version.image()
    report.check(flag_value(argv, "-t") == expected, f"make image tags {expected}", command.strip())
    report.check(flag_value(argv, "-f") == "Deploy/container/Dockerfile"
                 and f"VERSION={version.one_version()}" in argv,
                 "make image builds Deploy/container/Dockerfile with --build-arg VERSION=the one version", command.strip())


def section_container(report: Report, deploy: Path, binary: Path | None = None) -> None:
    dockerfile = deploy / "container" / "Dockerfile"
    hadolint = find_tool("hadolint")
    report.note(tool_version([hadolint, "--version"]))
    result = run([hadolint, "--no-color", str(dockerfile)])
    report.check(result.returncode == 0 and not result.stdout.strip(),
                 f"hadolint finds nothing in {dockerfile.relative_to(deploy.parent)}",
                 (result.stdout + result.stderr).strip())
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    check_structure(report, text)
    check_libraries(report, text, binary)
    check_make_image(report)
