"""What the kernel under the tests can do, and how fast a CPU the tests run on.

The kernel tests run on the host's kernel and, in `make kernels`, on Debian 11, 12 and 13's kernels in
VMs (Tests/kernels). conn-reaper chooses paths by kernel; a test that asserts a feature's effect asks
here whether the kernel has it and asserts the fallback's effect where it does not, naming the path it
expected (``expect``): the session's summary lists each test's expectation (conftest).

Timing: ``CONN_REAPER_EMULATED=1`` (set by the VM's init under TCG) means a CPU many times slower than
this host's. A bound about this host's speed (``speed_bound``) is then reported, not asserted; a bound
about behaviour (nothing reaped that lives, exactly these entries deleted) holds everywhere and stays a
plain assert.

The agents' probe timings are about this host's speed too: a live backend that answers a probe in a few
milliseconds here takes hundreds under TCG with nginx, three upstreams and sixty streams on two emulated
CPUs, so a 150 ms timeout fails live backends ("every backend of the pool looks down"). Under emulation
the lab multiplies probe intervals and timeouts, and the delays and waits measured against them (a
graceful shutdown's delay, an incident's window, a recovery bound that follows from the probes), by
``TIME_SCALE`` (``CONN_REAPER_TIME_SCALE``, default 5 under emulation, always 1 on a real CPU unless set):
``scaled``, ``scaled_probe``, ``scaled_flags``, ``scaled_bound``. A scaled bound is asserted at its scaled
value and printed with the host's; on a real CPU every value is the host's, exactly.
"""

from __future__ import annotations

import os
import platform
import re

RELEASE = platform.release()
VERSION: tuple[int, int] = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", RELEASE).groups())  # type: ignore[assignment]
EMULATED = os.environ.get("CONN_REAPER_EMULATED") == "1"
TIME_SCALE = float(os.environ.get("CONN_REAPER_TIME_SCALE") or (5 if EMULATED else 1))

#: feature -> (first Linux version with it, what it does, the fallback conn-reaper takes without it)
FEATURES = {
    "filtered flush": ((6, 12), "conntrack entries toward one IPv4 destination go by one CTA_FILTER flush",
                       "exact deletes, one request and one counted entry each"),
    "NAT status filter": ((5, 15), "the reply-source dump asks the kernel for IPS_DST_NAT entries only",
                          "every entry dumped and filtered in conn-reaper"),
}

#: What the tests of this session expected: (test, feature, has it, the path asserted).
EXPECTED: list[tuple[str, str, bool, str]] = []
#: Timing bounds about this host's speed, reported instead of asserted under emulation: (test, what, value, bound).
REPORTED: list[tuple[str, str, float, float]] = []
#: Bounds asserted at TIME_SCALE times the host's: (test, what, value, the host's bound, the bound asserted).
SCALED: list[tuple[str, str, float, float, float]] = []


def has(feature: str) -> bool:
    return VERSION >= FEATURES[feature][0]


def _test() -> str:
    return os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]


def expect(feature: str) -> bool:
    """Whether this kernel has `feature`; records which path the calling test asserts."""
    present = has(feature)
    first, effect, fallback = FEATURES[feature]
    path = f"{feature} ({effect})" if present else f"fallback: {fallback} (no {feature} before {first[0]}.{first[1]})"
    EXPECTED.append((_test(), feature, present, path))
    print(f"kernel {RELEASE}: expecting {path}")
    return present


def speed_bound(value: float, bound: float, what: str, unit: str = "s") -> None:
    """`value < bound` where the bound is about this host's speed: asserted natively, reported under emulation."""
    if EMULATED:
        REPORTED.append((_test(), what, value, bound))
        print(f"emulated CPU: {what} = {value:.3f}{unit} (bound {bound}{unit} on this host's CPU: reported, not asserted)")
        return
    assert value < bound, f"{what} = {value:.3f}{unit}, bound {bound}{unit}"


def scaled(seconds: float) -> float:
    """A delay or wait that follows from the probe timings, times TIME_SCALE (itself on a real CPU)."""
    return seconds * TIME_SCALE


def _scaled_duration(text: str) -> str:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    milliseconds = float(match.group(1)) * (1000 if match.group(2) == "s" else 1) * TIME_SCALE
    return f"{round(milliseconds)}ms"


def scaled_probe(probe: dict) -> dict:
    """A probe dict (pool_yaml's) with its interval and timeout times TIME_SCALE; the same dict's values at 1."""
    if TIME_SCALE == 1:
        return dict(probe)
    return {k: _scaled_duration(v) if k in ("interval", "timeout") else v for k, v in probe.items()}


def scaled_flags(flags: list[str]) -> list[str]:
    """Command-line probe flags with the values of --interval and --timeout times TIME_SCALE."""
    if TIME_SCALE == 1:
        return list(flags)
    return [_scaled_duration(v) if i and flags[i - 1] in ("--interval", "--timeout") else v for i, v in enumerate(flags)]


def announce_scale(what: str) -> None:
    """Prints the time scale a test runs at (captured with its output; the session's header and summary say it too)."""
    if TIME_SCALE == 1:
        print(f"time scale 1 (host CPU): {what} as written")
    else:
        print(f"time scale x{TIME_SCALE:g} ({'emulated CPU' if EMULATED else 'CONN_REAPER_TIME_SCALE'}): {what}")


def scaled_bound(value: float, bound: float, what: str, unit: str = "s") -> None:
    """`value < bound` for a bound that follows from the probe timings: asserted at ``bound`` on a real CPU,
    at ``bound * TIME_SCALE`` where the probes are scaled; printed either way."""
    asserted = bound * TIME_SCALE
    if TIME_SCALE != 1:
        SCALED.append((_test(), what, value, bound, asserted))
        print(f"scaled x{TIME_SCALE:g}: {what} = {value:.3f}{unit} (bound {asserted:g}{unit}; {bound:g}{unit} on the host's CPU)")
    assert value < asserted, f"{what} = {value:.3f}{unit}, bound {asserted:g}{unit}" + (
        f" ({bound:g}{unit} x{TIME_SCALE:g})" if TIME_SCALE != 1 else "")


def describe() -> str:
    lines = [f"kernel {RELEASE}{' (emulated CPU: speed bounds reported, not asserted)' if EMULATED else ''}"]
    if TIME_SCALE != 1:
        lines.append(f"  time scale x{TIME_SCALE:g}: probe intervals and timeouts, and the delays, waits and bounds "
                     "that follow from them, are this many times the host's")
    for feature, ((major, minor), _, fallback) in FEATURES.items():
        lines.append(f"  {feature}: {'yes' if has(feature) else f'no (before {major}.{minor}): ' + fallback}")
    return "\n".join(lines)
