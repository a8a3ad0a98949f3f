#!/usr/bin/env python3
"""The seed incident, without and with conn-reaper: `make demo`.

Stands up the lab of Tests/lab/incident.py in throwaway network namespaces (a client,
nginx as kubespray's L4 stream balancer and as an L7 proxy with proxy_read_timeout 30m, three
streaming upstreams), opens 30 long-lived streams of each kind through nginx, sets one upstream's
link down (no FIN, no RST), and watches what the streams do: first without the agent, then with
`conn-reaper run` (interval 200ms, timeout 150ms, fall 2) in nginx's namespace. Prints a before/after
table and writes a timeline SVG (streams per upstream over time, the cut and the reaps marked).
Everything it creates is removed at the end, also on Ctrl-C or SIGTERM.

Needs root, iproute2, iptables, nginx with the stream module, and the conn-reaper binary
($CONN_REAPER, default .build/debug/conn-reaper). Standard library only.
"""

from __future__ import annotations

import argparse
import html
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

from lab import netns
from lab.agent import pool_yaml
from lab.analysis import IncidentRun, percentile
from lab.incident import UPSTREAM_NAMES, IncidentLab

STEM = "crdemo"
DEAD = "up2"
STREAMS = 30
PROBE = {"type": "tcp", "interval": "200ms", "timeout": "150ms", "rise": 2, "fall": 2}
COLORS = {"up1": "#1f77b4", "up2": "#d62728", "up3": "#2ca02c", "stalled": "#7f7f7f"}
KIND_NAMES = {"l4": "L4 stream (proxy_timeout 10m)", "l7": "L7 http (proxy_read_timeout 30m)"}


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_case(binary: str | None, window: float) -> tuple[IncidentRun, list[str]]:
    """One incident in a fresh lab; returns the run and the agent's reap lines. Removes the lab."""
    with netns.Lab(netns.default_prefix(STEM)) as lab:
        incident = IncidentLab.build(lab)
        try:
            agent = None
            if binary:
                config = incident.write_file("agent.yaml", pool_yaml([
                    {"name": "stream", "backends": incident.all_backends("l4"), "probe": PROBE},
                    {"name": "http", "backends": incident.all_backends("l7"),
                     "probe": {**PROBE, "type": "http", "path": "/healthz"}},
                ]))
                agent = incident.start_agent(binary, ["--config", config])
                agent.wait_ready()
                agent.wait_states({f"{pool}/{incident.backend(name, kind)}": "up"
                                   for pool, kind in (("stream", "l4"), ("http", "l7")) for name in UPSTREAM_NAMES})
                say("conn-reaper is running in nginx's namespace; every backend is up")
            client = incident.start_client(l4=STREAMS, l7=STREAMS)
            incident.wait_flowing(client)
            say(f"{2 * STREAMS} streams flow through nginx; setting {DEAD}'s link down, watching {window:g} s")
            run = incident.run_incident(client, DEAD, window=window, agent=agent, settle=1.0)
            reaps = [line.text for line in agent.reaps()] if agent else []
            return run, reaps
        finally:
            incident.close()


def table(without: IncidentRun, with_agent: IncidentRun) -> str:
    rows = [("case", "streams on the dead upstream", "still stalled at the end", "time to recover p50 / max")]
    for kind in ("l4", "l7"):
        for label, run in (("no agent", without), ("conn-reaper", with_agent)):
            case = run.case(kind)
            window = run.t_end - run.t_cut
            stalled = [s for s in run.stalled_at(run.t_end, kind)]
            values = [v for v in case.stalled_recoveries if v is not None]
            if len(values) == len(case.on_dead) and values:
                recover = f"{percentile(values, 0.5):.2f} s / {max(values):.2f} s"
            else:
                recover = f"not within {window:.0f} s ({len(values)} of {len(case.on_dead)} recovered)"
            rows.append((f"{KIND_NAMES[kind]}, {label}", f"{len(case.on_dead)} of {len(case.streams)}",
                         f"{len(stalled)} after {window:.1f} s", recover))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


STACK = ("up1", "up3", DEAD, "stalled")   # bottom to top: the live upstreams, the dead one, stalled


def svg_panel(run: IncidentRun, title: str, x0: float, y0: float, width: float, height: float) -> list[str]:
    """Stacked areas: how many streams get lines from each upstream, and how many get none."""
    times, series = run.per_backend_series(step=0.025, start=run.t_cut - 1.0)
    total = len(run.dump.streams)
    t_min, t_max = times[0], times[-1]

    def x(t: float) -> float:
        return x0 + (t - t_min) / (t_max - t_min) * width

    def y(count: float) -> float:
        return y0 + height - count / total * height

    out = [f'<text x="{x0}" y="{y0 - 10}" font-size="15" font-weight="bold">{html.escape(title)}</text>']
    base = [0] * len(times)
    for name in STACK:
        top = [b + c for b, c in zip(base, series[name])]
        upper = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(times, top))
        lower = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in reversed(list(zip(times, base))))
        opacity = "0.45" if name == "stalled" else "0.8"
        out.append(f'<polygon points="{upper} {lower}" fill="{COLORS[name]}" fill-opacity="{opacity}" stroke="none"/>')
        base = top
    out.append(f'<rect x="{x0}" y="{y0}" width="{width}" height="{height}" fill="none" stroke="#999"/>')
    for count in range(0, total + 1, 10):
        out.append(f'<line x1="{x0 - 4}" y1="{y(count):.1f}" x2="{x0}" y2="{y(count):.1f}" stroke="#999"/>')
        out.append(f'<text x="{x0 - 7}" y="{y(count) + 4:.1f}" font-size="11" text-anchor="end">{count}</text>')
    step = 1 if t_max - t_min <= 6 else 2
    tick = int(t_min)
    while tick <= t_max:
        if tick >= t_min:
            out.append(f'<line x1="{x(tick):.1f}" y1="{y0 + height}" x2="{x(tick):.1f}" y2="{y0 + height + 4}" stroke="#999"/>')
            out.append(f'<text x="{x(tick):.1f}" y="{y0 + height + 16}" font-size="11" text-anchor="middle">{tick:+d} s</text>')
        tick += step
    out.append(f'<line x1="{x(0):.1f}" y1="{y0}" x2="{x(0):.1f}" y2="{y0 + height}" stroke="#000" stroke-width="2"/>')
    out.append(f'<text x="{x(0) + 4:.1f}" y="{y0 + 14}" font-size="12">cut: {DEAD} link down</text>')
    # Label the reaps that matter: each pool's first (reason=down, nginx's upstream sockets) and its
    # first still-dead reap that ended more than the agent's own probe (nginx's reconnects toward the
    # dead upstream, SYN_SENT). Every other reap is a tick on the top edge.
    label_y = y0 + 30
    labelled: dict[str, int] = {}
    for line in run.reaps:
        rel = line.t - run.t_cut
        if not t_min <= rel <= t_max:
            continue
        pool, sockets, reason = line.fields.get("pool", ""), int(line.fields.get("sockets", "0")), line.fields.get("reason")
        wanted = (reason == "dead" and labelled.get(pool, 0) == 0) or (
            reason == "still-dead" and labelled.get(pool, 0) == 1 and sockets > 1)
        if not wanted:
            out.append(f'<line x1="{x(rel):.1f}" y1="{y0}" x2="{x(rel):.1f}" y2="{y0 + 6}" stroke="#ff7f0e"/>')
            continue
        labelled[pool] = labelled.get(pool, 0) + 1
        out.append(f'<line x1="{x(rel):.1f}" y1="{y0}" x2="{x(rel):.1f}" y2="{y0 + height}" stroke="#ff7f0e" '
                   f'stroke-width="1.5" stroke-dasharray="4,2"/>')
        what = "nginx's streams" if reason == "dead" else "nginx's retries to it"
        text = f"+{rel:.2f} s reap {pool}: {sockets} sockets ({what})"
        out.append(f'<text x="{x(rel) + 4:.1f}" y="{label_y}" font-size="11" fill="#b35900">{html.escape(text)}</text>')
        label_y += 14
    if not run.agent:
        out.append(f'<text x="{x0 + width - 6}" y="{y0 + 30}" font-size="12" text-anchor="end">'
                   f'no agent: nothing ends the stalled streams (nginx would wait 10 min / 30 min)</text>')
    return out


def write_svg(path: Path, without: IncidentRun, with_agent: IncidentRun) -> None:
    width, panel_h, left = 960, 230, 60
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{2 * panel_h + 200}" '
             f'font-family="sans-serif">',
             '<rect width="100%" height="100%" fill="white"/>',
             f'<text x="{left}" y="26" font-size="17" font-weight="bold">Streams per upstream around the cut: '
             f'{STREAMS} L4 + {STREAMS} L7 streams through nginx</text>']
    parts += svg_panel(without, "without conn-reaper", left, 70, width - left - 30, panel_h)
    parts += svg_panel(with_agent, "with conn-reaper (interval 200ms, timeout 150ms, fall 2)", left,
                       70 + panel_h + 70, width - left - 30, panel_h)
    legend_y = 2 * panel_h + 185
    x = left
    for name in STACK:
        label = f"streams served by {name}" + (" (cut)" if name == DEAD else "")
        if name == "stalled":
            label = "streams stalled (no line for 150 ms)"
        opacity = "0.45" if name == "stalled" else "0.8"
        parts.append(f'<rect x="{x}" y="{legend_y - 11}" width="18" height="12" fill="{COLORS[name]}" '
                     f'fill-opacity="{opacity}"/>')
        parts.append(f'<text x="{x + 24}" y="{legend_y}" font-size="12">{html.escape(label)}</text>')
        x += 50 + 7 * len(label)
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo-timeline.svg", help="where the timeline SVG goes")
    parser.add_argument("--without-window", type=float, default=10.0, help="seconds to watch without the agent")
    parser.add_argument("--with-window", type=float, default=3.0, help="seconds to watch with the agent")
    args = parser.parse_args()

    if os.geteuid() != 0:
        print("incident_demo: needs root (network namespaces); run `sudo make demo`", file=sys.stderr)
        return 1
    binary = os.environ.get("CONN_REAPER") or str(REPO / ".build" / "debug" / "conn-reaper")
    if not os.access(binary, os.X_OK):
        print(f"incident_demo: no conn-reaper binary at {binary} (make build)", file=sys.stderr)
        return 1
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    netns.reap_stale_namespaces(STEM)     # whatever a killed earlier demo left
    prefix = netns.default_prefix(STEM)
    try:
        say(f"without conn-reaper: nginx in front of {', '.join(UPSTREAM_NAMES)}")
        without, _ = run_case(None, args.without_window)
        say("with conn-reaper")
        with_agent, reaps = run_case(binary, args.with_window)
    finally:
        left = netns.cleanup_namespaces(prefix)
        if left:
            say(f"removed leftover namespaces {left}")

    print()
    print(table(without, with_agent))
    print()
    for line in reaps[:4]:
        print("  " + line)
    if len(reaps) > 4:
        print(f"  ... {len(reaps) - 4} more reap lines")
    out = Path(args.out).resolve()
    write_svg(out, without, with_agent)
    print()
    say(f"timeline written to {out}")
    ours = [name for name in netns.list_namespaces() if name.startswith(prefix)]
    say("removed every namespace and process of the demo" if not ours else f"namespaces left: {ours}")
    return 0 if not ours else 1


if __name__ == "__main__":
    sys.exit(main())
