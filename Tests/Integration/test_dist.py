"""What `make dist` makes, installed the way an operator would: the .deb unpacked into a scratch root
(dpkg-deb -x: no maintainer scripts, nothing on this machine changes) and the tarball next to it.

The files are where the unit expects them; the binary prints its version and revision; the unit
passes `systemd-analyze verify`; `man -l` renders the page; each shell accepts its completion;
Depends names the libraries the binary links; lintian reports no error; SHA256SUMS holds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from checks import sharedlibs
from conftest import unavailable

REPO = Path(__file__).resolve().parents[2]
DIST = REPO / ".build" / "dist"
VERSION = re.search(r'static let current = "([^"]+)"', (REPO / "Sources/Reaper/Version.swift").read_text()).group(1)


def run(argv, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def artifacts() -> dict[str, Path]:
    debs = sorted(DIST.glob(f"conn-reaper_{VERSION}_*.deb"))
    tarballs = sorted(DIST.glob(f"conn-reaper-{VERSION}-linux-*.tar.gz"))
    if not debs or not tarballs:
        unavailable(f"no {VERSION} artifacts in {DIST}: run `make dist` first (make test does)")
    return {"deb": debs[-1], "tarball": tarballs[-1], "sums": DIST / "SHA256SUMS"}


@pytest.fixture(scope="module")
def root(artifacts, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("deb-root")
    result = run(["dpkg-deb", "-x", str(artifacts["deb"]), str(directory)])
    assert result.returncode == 0, result.stderr
    return directory


def field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), name]).stdout.strip()


def test_the_package_installs_every_file_where_the_unit_and_the_shells_look(root, artifacts):
    expected = {
        "usr/bin/conn-reaper": 0o755,
        "usr/lib/systemd/system/conn-reaper.service": 0o644,
        "etc/conn-reaper/config.yaml": 0o644,
        "usr/share/bash-completion/completions/conn-reaper": 0o644,
        "usr/share/zsh/vendor-completions/_conn-reaper": 0o644,
        "usr/share/fish/vendor_completions.d/conn-reaper.fish": 0o644,
        "usr/share/man/man1/conn-reaper.1.gz": 0o644,
        "usr/share/doc/conn-reaper/copyright": 0o644,
        "usr/share/doc/conn-reaper/changelog.gz": 0o644,
    }
    for path, mode in expected.items():
        assert (root / path).is_file(), f"{path} is missing from {artifacts['deb'].name}"
        assert (root / path).stat().st_mode & 0o777 == mode, f"{path}: mode {oct((root / path).stat().st_mode & 0o777)}"
    unit = (root / "usr/lib/systemd/system/conn-reaper.service").read_text()
    exec_start = re.search(r"^ExecStart=(\S+) run --config (\S+)", unit, re.M)
    assert exec_start, unit
    assert (root / exec_start.group(1).lstrip("/")).is_file(), f"the unit runs {exec_start.group(1)}, which is not packaged"
    assert (root / exec_start.group(2).lstrip("/")).is_file(), f"the unit reads {exec_start.group(2)}, which is not packaged"
    contents = run(["dpkg-deb", "-c", str(artifacts["deb"])]).stdout
    assert all(" root/root " in line for line in contents.splitlines()), contents
    assert run(["dpkg-deb", "-I", str(artifacts["deb"]), "conffiles"]).stdout.split() == ["/etc/conn-reaper/config.yaml"]


def test_the_binary_prints_the_one_version_and_its_revision(root):
    result = run([str(root / "usr/bin/conn-reaper"), "--version"])
    assert result.returncode == 0, result.stderr
    match = re.fullmatch(rf"{re.escape(VERSION)} \(revision ([0-9a-f]{{7,40}}(-dirty)?)\)\n", result.stdout)
    assert match, f"--version printed {result.stdout!r}"
    head = run(["git", "-C", str(REPO), "rev-parse", "HEAD"]).stdout.strip()
    if head:
        assert head.startswith(match.group(1).removesuffix("-dirty")), f"{match.group(1)} is not HEAD {head}"


def owning_package(library: str) -> str | None:
    """The package that ships the file the dynamic linker loads for ``library``."""
    listing = run(["ldconfig", "-p"]).stdout
    path = next((line.rsplit(" ", 1)[1] for line in listing.splitlines() if line.strip().startswith(library + " ")), None)
    return sharedlibs.debian_package(path) if path else None


def test_the_package_depends_on_every_library_the_binary_links(root, artifacts):
    assert field(artifacts["deb"], "Version") == VERSION
    depends = field(artifacts["deb"], "Depends")
    needed = re.findall(r"NEEDED\s+(\S+)", run(["objdump", "-p", str(root / "usr/bin/conn-reaper")]).stdout)
    assert needed, "objdump found no NEEDED entries"
    assert not [lib for lib in needed if lib.startswith("libswift") or "Foundation" in lib], \
        f"the Swift runtime must be linked in statically: {needed}"
    for library in needed:
        owner = owning_package(library)
        assert owner and owner in depends, f"{library} (from {owner!r}) is not in Depends: {depends}"
    for package in ("libmnl0", "libnetfilter-conntrack3", "libc6"):
        assert package in depends, depends


def test_the_unit_verifies_the_page_renders_and_the_completions_parse(root):
    from checks.systemd import make_unit_root
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (make deps installs systemd)"
    unit = root / "usr/lib/systemd/system/conn-reaper.service"
    with make_unit_root(unit, str(root / "usr/bin/conn-reaper")) as unit_root:
        verify = run([analyze, "verify", f"--root={unit_root}", "--man=no", unit.name])
        assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr
    page = run(["man", "-l", str(root / "usr/share/man/man1/conn-reaper.1.gz")], env={**os.environ, "MANWIDTH": "100"})
    assert page.returncode == 0, page.stderr
    assert "conn-reaper" in page.stdout and "purge" in page.stdout and "run" in page.stdout, page.stdout[:2000]
    assert "warning" not in page.stderr.lower(), page.stderr
    assert run(["bash", "-n", str(root / "usr/share/bash-completion/completions/conn-reaper")]).returncode == 0
    for shell, path in (("zsh", "usr/share/zsh/vendor-completions/_conn-reaper"),
                        ("fish", "usr/share/fish/vendor_completions.d/conn-reaper.fish")):
        if shutil.which(shell):
            assert run([shell, "-n", str(root / path)]).returncode == 0, f"{shell} rejects its completion"
        else:
            assert (root / path).read_text().strip(), f"the {shell} completion is empty"


def test_lintian_finds_no_error(artifacts):
    lintian = shutil.which("lintian")
    if lintian is None:
        unavailable("lintian is missing (make deps installs it)")
    result = run([lintian, "--no-tag-display-limit", str(artifacts["deb"])])
    errors = [line for line in result.stdout.splitlines() if line.startswith("E:")]
    assert not errors, result.stdout
    print(f"\nlintian: {len(result.stdout.splitlines())} lines, no error:\n{result.stdout}")


def test_the_tarball_carries_the_same_tree_and_the_sums_hold(root, artifacts):
    with tarfile.open(artifacts["tarball"]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
        top = {name.split("/", 1)[0] for name in tar.getnames()}
    assert top == {artifacts["tarball"].name.removesuffix(".tar.gz")}, top
    for path in ("usr/bin/conn-reaper", "usr/lib/systemd/system/conn-reaper.service", "etc/conn-reaper/config.yaml",
                 "usr/share/man/man1/conn-reaper.1.gz", "usr/share/bash-completion/completions/conn-reaper",
                 "LICENSE", "README.md"):
        assert path in names, f"{path} is not in {artifacts['tarball'].name}"
    sums = dict(reversed(line.split()) for line in artifacts["sums"].read_text().splitlines())
    for key in ("deb", "tarball"):
        digest = hashlib.sha256(artifacts[key].read_bytes()).hexdigest()
        assert sums.get(artifacts[key].name) == digest, f"SHA256SUMS disagrees on {artifacts[key].name}"
