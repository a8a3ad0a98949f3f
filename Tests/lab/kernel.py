"""What the kernel under the tests can do, and how fast a CPU the tests run on.

The kernel tests run on the host's kernel and, in `make kernels`, on Debian 11, 12 and 13's kernels in
VMs (Tests/kernels). conn-reaper chooses paths by kernel; a test that asserts a feature's effect asks
here whether the kernel has it and asserts the fallback's effect where it does not, naming the path it
expected (``expect``): the session's summary lists each test's expectation (conftest).

Timing: ``CONN_REAPER_EMULATED=1`` (set by the VM's init under TCG) means a CPU many times slower than
this host's. A bound about this host's speed (``speed_bound``) is then reported, not asserted; a bound
about behaviour (nothing reaped that lives, exactly these entries deleted) holds everywhere and stays a
plain assert.
"""

from __future__ import annotations

import os
import platform
import re

RELEASE = platform.release()
VERSION: tuple[int, int] = tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", RELEASE).groups())  # type: ignore[assignment]
EMULATED = os.environ.get("CONN_REAPER_EMULATED") == "1"

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


def describe() -> str:
    lines = [f"kernel {RELEASE}{' (emulated CPU: speed bounds reported, not asserted)' if EMULATED else ''}"]
    for feature, ((major, minor), _, fallback) in FEATURES.items():
        lines.append(f"  {feature}: {'yes' if has(feature) else f'no (before {major}.{minor}): ' + fallback}")
    return "\n".join(lines)
