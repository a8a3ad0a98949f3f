"""What the soak samples of the agent process, and how it judges growth.

Every sample reads /proc of the agent (no request to it, so a stuck agent is sampled too):

- ``fds``: entries of /proc/PID/fd; ``foreign_fds`` the sockets among them that no table of the
  agent's own namespace lists (its netlink sockets in the other namespaces `netns: all` enters);
  ``core_fds`` the rest.
- ``rss_mib``: VmRSS; ``threads``: Threads of /proc/PID/status; ``tasks``: entries of /proc/PID/task
  (the kernel's tasks: the agent exposes no count of Swift tasks, so the soak takes what the kernel
  shows; a Swift task leak shows up as RSS, a thread leak as threads).
- ``ns_threads``: tasks in another network namespace than the agent's (one worker thread per
  namespace `netns: all` found); ``stale_threads``: those whose namespace no longer exists on the
  node (nothing under /run/netns or /proc/*/ns/net names it); ``core_threads`` = tasks - ns_threads,
  from one listing of /proc/PID/task (Threads, read a moment apart, may differ by one or two).
- ``namespaces``: network namespaces on the node (the agent walks them all); ``cpu_s``: its CPU time.

Judgement: the Theil-Sen slope (median of pairwise slopes; the least-squares one is printed beside
it) of each judged series over the second half of the run (the first half is warm-up: allocator
arenas, worker threads, the churn client's connections building up), and the growth it predicts
across that half (slope x its length) must stay within a tolerance (``TOLERANCES``). A worker thread whose
namespace is gone must be gone too within ``STALE_LIMIT_S`` (the agent re-enumerates every 10 s and
drops a worker unused for 60 s).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import time

#: Growth allowed across the second half: (absolute, fraction of the series' median); the larger wins.
TOLERANCES = {
    "core_fds": (6.0, 0.05),
    # Thread pools (libdispatch's under Swift concurrency, NIO's) add a thread or two at a load peak.
    "core_threads": (3.0, 0.0),
    # glibc keeps a malloc arena per thread that ever contended, up to 8 per core, and never returns
    # them: RSS steps up with the most namespace workers alive at once, then stays.
    "rss_mib": (4.0, 0.05),
}
#: Series printed and fitted but not judged on their own: they follow the namespaces on the node.
REPORTED = ("fds", "foreign_fds", "threads", "tasks", "ns_threads", "namespaces", "cpu_s")
STALE_LIMIT_S = 90.0

_SOCKET_TABLES = ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "unix", "netlink", "packet")


@dataclasses.dataclass
class Sample:
    t: float                 # seconds since the soak started
    fds: int
    core_fds: int
    foreign_fds: int
    rss_mib: float
    threads: int
    tasks: int
    ns_threads: int
    stale_threads: int
    core_threads: int
    namespaces: int
    cpu_s: float
    held: int                # connections the churn client holds


def node_namespaces() -> set[int]:
    """Inodes of every network namespace on the node, as the agent's `netns: all` finds them."""
    found = set()
    for path in glob.glob("/run/netns/*") + glob.glob("/proc/[0-9]*/ns/net"):
        try:
            found.add(os.stat(path).st_ino)
        except OSError:
            pass
    return found


def _namespace_sockets(pid: int) -> set[int]:
    """Socket inodes the agent's own namespace lists (/proc/PID/net is its main thread's namespace)."""
    inodes = set()
    for table in _SOCKET_TABLES:
        try:
            with open(f"/proc/{pid}/net/{table}") as handle:
                lines = handle.read().splitlines()[1:]
        except OSError:
            continue
        column = {"unix": 6, "packet": 8}.get(table, 9)
        for line in lines:
            fields = line.split()
            if len(fields) > column and fields[column].isdigit():
                inodes.add(int(fields[column]))
    return inodes


def _namespace_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _thread_name(pid: int, tid: str) -> str:
    try:
        with open(f"/proc/{pid}/task/{tid}/comm") as handle:
            return handle.read().strip()
    except OSError:
        return "?"


class Sampler:
    """Samples one agent process; keeps which worker threads sat in a vanished namespace since when."""

    def __init__(self, pid: int, started: float) -> None:
        self.pid = pid
        self.started = started
        self.own_namespace = _namespace_inode(f"/proc/{pid}/ns/net")
        self.samples: list[Sample] = []
        self.stale_since: dict[tuple[int, int], float] = {}
        self.stale_longest = 0.0
        self.core_names: list[dict[str, int]] = []   # per sample: the core threads by name (comm)

    def sample(self, held: int) -> Sample:
        pid = self.pid
        fd_links = []
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                fd_links.append(os.readlink(f"/proc/{pid}/fd/{name}"))
            except OSError:
                pass
        own_sockets = _namespace_sockets(pid)
        foreign = sum(1 for link in fd_links if link.startswith("socket:[") and int(link[8:-1]) not in own_sockets)
        status = {}
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                status[key] = value.strip()
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        alive = node_namespaces()
        now = time.monotonic() - self.started
        in_other, stale = 0, set()
        names: dict[str, int] = {}
        tids = os.listdir(f"/proc/{pid}/task")
        for tid in tids:
            inode = _namespace_inode(f"/proc/{pid}/task/{tid}/ns/net")
            if inode is None or inode == self.own_namespace:
                name = _thread_name(pid, tid)
                names[name] = names.get(name, 0) + 1
                continue
            in_other += 1
            if inode not in alive:
                stale.add((int(tid), inode))
        for key in stale:
            since = self.stale_since.setdefault(key, now)
            self.stale_longest = max(self.stale_longest, now - since)
        self.stale_since = {key: since for key, since in self.stale_since.items() if key in stale}
        threads = int(status["Threads"])
        sample = Sample(
            t=round(now, 1), fds=len(fd_links), core_fds=len(fd_links) - foreign, foreign_fds=foreign,
            rss_mib=round(int(status["VmRSS"].split()[0]) / 1024, 2), threads=threads, tasks=len(tids),
            ns_threads=in_other, stale_threads=len(stale), core_threads=len(tids) - in_other,
            namespaces=len(alive), cpu_s=round(cpu, 2), held=held)
        self.samples.append(sample)
        self.core_names.append(names)
        return sample


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


def robust_slope(points: list[tuple[float, float]]) -> float:
    """Theil-Sen slope: the median of the slopes between every pair of points. A few spikes (every
    probe socket open at once right after a reload, a burst of namespace workers) do not tilt it."""
    slopes = [(y2 - y1) / (x2 - x1) for i, (x1, y1) in enumerate(points) for x2, y2 in points[i + 1:] if x2 != x1]
    return median(slopes) if slopes else 0.0


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


@dataclasses.dataclass
class Trend:
    series: str
    first: float
    last: float
    median: float
    per_hour: float          # Theil-Sen slope over the second half, per hour
    least_squares_per_hour: float
    growth: float            # what the Theil-Sen slope adds across the second half
    allowed: float | None    # None: reported, not judged

    @property
    def ok(self) -> bool:
        return self.allowed is None or self.growth <= self.allowed


def trends(samples: list[Sample]) -> list[Trend]:
    """Each series' slope over the second half of the samples, judged against TOLERANCES."""
    if len(samples) < 4:
        raise ValueError(f"{len(samples)} samples: too few to fit a slope (a run of at least a minute is needed)")
    half = samples[len(samples) // 2:]
    span_s = half[-1].t - half[0].t
    result = []
    for series in (*TOLERANCES, *REPORTED):
        values = [(s.t, float(getattr(s, series))) for s in half]
        per_second = robust_slope(values)
        middle = median([v for _, v in values])
        allowed = None
        if series in TOLERANCES:
            absolute, fraction = TOLERANCES[series]
            allowed = max(absolute, fraction * middle)
        result.append(Trend(series, float(getattr(samples[0], series)), float(getattr(samples[-1], series)), middle,
                            per_second * 3600, slope(values) * 3600, per_second * span_s, allowed))
    return result


def sample_table(samples: list[Sample], every: int = 1) -> str:
    """Markdown table of the samples (every ``every``-th, and always the last)."""
    columns = [field.name for field in dataclasses.fields(Sample)]
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    chosen = samples[::every] + ([samples[-1]] if samples and (len(samples) - 1) % every else [])
    for sample in chosen:
        rows.append("| " + " | ".join(str(getattr(sample, c)) for c in columns) + " |")
    return "\n".join(rows)


def trend_table(found: list[Trend]) -> str:
    rows = ["| series | first | last | median (2nd half) | slope per hour, Theil-Sen (least squares) | growth across 2nd half | allowed | verdict |",
            "|---|---|---|---|---|---|---|---|"]
    for trend in found:
        allowed = "-" if trend.allowed is None else f"{trend.allowed:.2f}"
        verdict = "reported" if trend.allowed is None else ("flat" if trend.ok else "**GROWS**")
        rows.append(f"| {trend.series} | {trend.first:g} | {trend.last:g} | {trend.median:g} | "
                    f"{trend.per_hour:+.2f} ({trend.least_squares_per_hour:+.2f}) | "
                    f"{trend.growth:+.2f} | {allowed} | {verdict} |")
    return "\n".join(rows)
