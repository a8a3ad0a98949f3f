"""What the stream client recorded, analysed: per stream, which upstream sent each line when, how each
connection ended; per incident run, how long the streams stalled after a cut and how the load spread.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

@dataclasses.dataclass
class Stream:
    index: int
    kind: str                  # "l4" | "l7"
    connections: list[dict]    # {"start","connected","end","why","data": [[t, backend], ...]}

    def arrivals(self) -> list[tuple[float, str]]:
        return [(t, b) for c in self.connections for t, b in c["data"]]

    def backend_at(self, t: float) -> str | None:
        """The upstream that sent the last line received at or before ``t``."""
        last = None
        for when, backend in self.arrivals():
            if when > t:
                break
            last = backend
        return last

    def first_after(self, t: float, exclude: str | None = None) -> float | None:
        return next((when for when, backend in self.arrivals() if when > t and backend != exclude), None)

    def lines_between(self, start: float, end: float, backend: str | None = None) -> int:
        return sum(1 for when, b in self.arrivals() if start < when <= end and (backend is None or b == backend))

    def connections_to(self, upstream: str) -> list[dict]:
        """Connections that got lines from ``upstream`` (through nginx a client connection has one
        upstream connection, an l7 one one request); see run_client for their fields."""
        return [c for c in self.connections if any(b == upstream for _, b in c["data"])]

    def connections_started_between(self, start: float, end: float) -> list[dict]:
        return [c for c in self.connections if start < c["start"] <= end]

    def ended_between(self, start: float, end: float) -> list[dict]:
        return [c for c in self.connections if c["end"] is not None and start < c["end"] <= end]

    def longest_gap(self, start: float, end: float) -> float:
        times = [start] + [t for t, _ in self.arrivals() if start < t <= end] + [end]
        return max(b - a for a, b in zip(times, times[1:]))


@dataclasses.dataclass
class StreamDump:
    now: float
    streams: list[Stream]

    @classmethod
    def parse(cls, document: dict) -> "StreamDump":
        return cls(document["now"], [Stream(i, s["kind"], s["connections"]) for i, s in enumerate(document["streams"])])

    def of_kind(self, kind: str) -> list[Stream]:
        return [s for s in self.streams if s.kind == kind]


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclasses.dataclass
class CaseResult:
    """One kind of stream (l4 or l7) through one incident run."""
    kind: str
    streams: list[Stream]
    on_dead: list[Stream]          # streams whose upstream at the cut was the dead one
    recovery: dict[int, float | None]   # stream index -> seconds from the cut to its first line from a live upstream

    @property
    def stalled_recoveries(self) -> list[float | None]:
        return [self.recovery[s.index] for s in self.on_dead]

    def summary(self) -> dict:
        values = [v for v in self.stalled_recoveries if v is not None]
        return {"kind": self.kind, "streams": len(self.streams), "on_dead": len(self.on_dead),
                "recovered": len(values),
                "p50": round(percentile(values, 0.5), 4) if values else None,
                "max": round(max(values), 4) if values else None,
                "all": sorted(round(v, 4) for v in values)}


@dataclasses.dataclass
class IncidentRun:
    """What happened around one cut: stream logs, the cut time, the agent's reap times."""
    dead: str                      # upstream name, e.g. "up2"
    t_cut: float                   # time.monotonic() just before the link went down
    t_cut_done: float              # ... and when `ip link set down` had returned
    t_end: float
    dump: StreamDump
    distribution: dict             # {kind: {backend: streams}} at the cut
    reap_times: list[float]        # monotonic arrival times of the agent's reap lines for the dead upstream
    agent: bool
    reaps: list = dataclasses.field(default_factory=list)   # those lines (LogLine)

    def case(self, kind: str) -> CaseResult:
        streams = self.dump.of_kind(kind)
        on_dead = [s for s in streams if s.backend_at(self.t_cut) == self.dead]
        recovery = {}
        for stream in streams:
            first = stream.first_after(self.t_cut, exclude=self.dead)
            recovery[stream.index] = None if first is None else first - self.t_cut
        return CaseResult(kind, streams, on_dead, recovery)

    def stalled_at(self, t: float, kind: str | None = None, window: float = 0.3) -> list[Stream]:
        """Streams without a line in the ``window`` seconds before ``t``."""
        return [s for s in self.dump.streams if (kind is None or s.kind == kind)
                and s.lines_between(t - window, t) == 0]

    def per_backend_series(self, step: float = 0.05, window: float = 0.15,
                           start: float | None = None) -> tuple[list[float], dict[str, list[int]]]:
        """Streams flowing from each upstream over time (a stream counts for an upstream at t when it got
        a line from it in the ``window`` before t; else it counts as "stalled")."""
        start = self.t_cut - 2.0 if start is None else start
        upstreams = sorted({b for s in self.dump.streams for _, b in s.arrivals()})
        times, series = [], {name: [] for name in (*upstreams, "stalled")}
        arrivals = [s.arrivals() for s in self.dump.streams]
        t = start
        while t <= self.t_end:
            counts = dict.fromkeys(series, 0)
            for stream_arrivals in arrivals:
                recent = [b for when, b in stream_arrivals if t - window < when <= t]
                counts[recent[-1] if recent else "stalled"] += 1
            for name in series:
                series[name].append(counts[name])
            times.append(t - self.t_cut)
            t += step
        return times, series
