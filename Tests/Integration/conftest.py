"""Fixtures for the kernel integration tests of conn-reaper.

Gating: the tests need root and `ip netns add`. Without root they are skipped, unless CI=true, in
which case they FAIL: under CI every kernel test must run, and any skip is turned into a failure.

Cleanup: each test's namespaces belong to a Lab that is closed in the fixture's finally (processes
stopped, namespaces deleted); the session also deletes any leftover `crt-<pid>-*` namespace of this
run at its end, and stale ones of runs whose process died, at its start. LAB_NETNS_STEM replaces
`crt` (runs that share a machine each keep to their own names).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from lab import kernel, netns
from lab.incident import IncidentLab
from lab.topology import Reaper, Topology

sys.dont_write_bytecode = True

UNDER_CI = os.environ.get("CI") == "true"
REPO = Path(__file__).resolve().parents[2]
STEM = os.environ.get("LAB_NETNS_STEM") or netns.DEFAULT_STEM
RUN_PREFIX = netns.default_prefix(STEM)
#: The fault tests' own namespaces (Tests/Integration/test_fault_*.py): ``crfault-<pid>-``.
FAULT_STEM = "crfault"


def unavailable(reason: str) -> None:
    """Skip outside CI; fail under CI=true, where every kernel test must run."""
    if UNDER_CI:
        pytest.fail(f"{reason} (CI=true: the kernel tests must run, not skip)", pytrace=False)
    pytest.skip(reason)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


#: The memos a conn-reaper process leaves for the rest of the boot (the flush canary's verdict) go
#: to a directory of this session's, not the host's /run/conn-reaper.
RUNTIME_DIRECTORY = "CONN_REAPER_RUNTIME_DIRECTORY"


def pytest_sessionstart(session):
    # A SIGTERM/SIGHUP (e.g. a CI timeout) unwinds like Ctrl-C, so fixtures and the session
    # finalizer below still remove namespaces and processes.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        try:
            signal.signal(signum, _raise_interrupt)
        except (ValueError, OSError):
            pass
    if RUNTIME_DIRECTORY not in os.environ:
        try:
            os.environ[RUNTIME_DIRECTORY] = tempfile.mkdtemp(prefix="conn-reaper-run-")
            session.config._conn_reaper_runtime = os.environ[RUNTIME_DIRECTORY]
        except OSError:
            pass  # a read-only /tmp: the binary finds no memo and tries the flush itself


def pytest_sessionfinish(session, exitstatus):
    made = getattr(session.config, "_conn_reaper_runtime", None)
    if made:
        shutil.rmtree(made, ignore_errors=True)
    if os.geteuid() == 0 and netns.tool("ip"):
        left = netns.cleanup_namespaces(RUN_PREFIX) + netns.cleanup_namespaces(netns.default_prefix(FAULT_STEM))
        if left:
            sys.stderr.write(f"\nconftest: removed leftover namespaces {left}\n")


def pytest_report_header(config):
    return kernel.describe()


def pytest_terminal_summary(terminalreporter):
    """Which path each kernel-aware test expected, the bounds asserted scaled, and the speed figures reported
    instead of asserted."""
    if kernel.EXPECTED:
        terminalreporter.write_sep("-", f"kernel paths expected on {kernel.RELEASE}")
        for test, _, _, path in kernel.EXPECTED:
            terminalreporter.write_line(f"{test}: {path}")
    if kernel.SCALED:
        terminalreporter.write_sep("-", f"bounds scaled x{kernel.TIME_SCALE:g} with the probe timings (asserted at the scaled value)")
        for test, what, value, bound, asserted in kernel.SCALED:
            terminalreporter.write_line(f"{test}: {what} = {value:.3f} (bound {asserted:g}; {bound:g} on this host's CPU)")
    if kernel.REPORTED:
        terminalreporter.write_sep("-", "speed bounds reported, not asserted (emulated CPU)")
        for test, what, value, bound in kernel.REPORTED:
            terminalreporter.write_line(f"{test}: {what} = {value:.3f} (bound on this host's CPU: {bound})")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if UNDER_CI and report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, where every kernel test must run: {reason}"
    return report


@pytest.fixture(scope="session")
def kernel_env():
    """Root, iproute2, and a working `ip netns add`; also clears namespaces of dead earlier runs."""
    if os.geteuid() != 0:
        unavailable("kernel tests need root (network namespaces, CAP_NET_ADMIN)")
    for name in ("ip", "iptables", "ip6tables", "conntrack"):
        if netns.tool(name) is None:
            unavailable(f"'{name}' is not installed (make deps installs it)")
    netns.reap_stale_namespaces(STEM)
    probe = f"{RUN_PREFIX}probe"
    result = subprocess.run([netns.tool("ip"), "netns", "add", probe], capture_output=True, text=True)
    if result.returncode != 0:
        unavailable(f"`ip netns add` fails here: {result.stderr.strip()}")
    netns.delete_namespace(probe)
    yield


@pytest.fixture(scope="session")
def reaper_binary(kernel_env) -> str:
    """A private copy of $CONN_REAPER (default .build/debug/conn-reaper) in a mode-755 temp dir.

    The copy keeps the run immune to a rebuild of the shared tree (exec of a binary being
    relinked fails with ETXTBSY) and is usable by `nobody` for the EPERM tests."""
    source = os.environ.get("CONN_REAPER") or str(REPO / ".build" / "debug" / "conn-reaper")
    source = os.path.abspath(source)
    if not (os.path.isfile(source) and os.access(source, os.X_OK)):
        pytest.fail(f"conn-reaper binary not found at {source}: build it (swift build) or set CONN_REAPER",
                    pytrace=False)
    directory = tempfile.mkdtemp(prefix="conn-reaper-test-")
    try:
        os.chmod(directory, 0o755)
        copy = os.path.join(directory, "conn-reaper")
        problem = ""
        for _ in range(20):   # the source may be mid-relink by a concurrent build: wait for a runnable copy
            shutil.copy(source, copy)
            os.chmod(copy, 0o755)
            check = subprocess.run([copy, "--version"], capture_output=True, text=True, timeout=30)
            if check.returncode == 0:
                break
            problem = f"exit {check.returncode}: {check.stderr.strip()}"
            time.sleep(1)
        else:
            pytest.fail(f"a copy of {source} does not run: {problem}", pytrace=False)
        yield copy
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def reaper(reaper_binary) -> Reaper:
    return Reaper(reaper_binary)


@pytest.fixture
def lab(kernel_env):
    """A Lab whose namespaces and processes are removed after the test, pass or fail."""
    lab = netns.Lab(RUN_PREFIX)
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def fault_lab(kernel_env):
    """A Lab for the fault tests, its namespaces named ``crfault-<pid>-...``; stale ones of dead runs go first."""
    netns.reap_stale_namespaces(FAULT_STEM)
    lab = netns.Lab(netns.default_prefix(FAULT_STEM))
    try:
        yield lab
    finally:
        lab.close()


@pytest.fixture
def topo(lab) -> Topology:
    """Client and server namespaces with echo servers; see lab/topology.py."""
    return Topology.build(lab)


@pytest.fixture
def build_incident(lab):
    """Builds the seed incident's lab (IncidentLab.build's options: switch, shutdown_delay, ...); its
    processes and temp dir go after the test, before the lab's namespaces."""
    built = []

    def build(**options) -> IncidentLab:
        incident = IncidentLab.build(lab, **options)
        built.append(incident)
        return incident

    try:
        yield build
    finally:
        for incident in built:
            incident.close()


@pytest.fixture
def incident(build_incident) -> IncidentLab:
    """The nginx lab as lab/incident.py builds it by default."""
    return build_incident()
