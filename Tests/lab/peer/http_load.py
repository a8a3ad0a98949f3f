"""The ``http-load`` role of the traffic peer: many concurrent HTTP clients and slowloris clients
against one endpoint (the agent's /metrics and /status), in a process of its own.

Request ``run`` ``{"host", "port", "paths": [...], "concurrency": 1000, "seconds": 8,
"slow": 200, "byte_every": 1.0}``: for ``seconds``, ``concurrency`` clients each send GET requests
one after the other on fresh connections (cycling through ``paths``), and ``slow`` clients open a
connection and send a request head one byte every ``byte_every`` seconds, never finishing it.
Answers ``requests`` (complete 200 answers), ``errors`` (by kind), latency ``p50_ms``/``p99_ms``/
``max_ms``, and for the slow clients ``slow_closed`` (closed by the server) with
``slow_closed_after_s`` (median seconds from connect to the server's close) and ``slow_open``
(still open at the end).
"""

from __future__ import annotations

import asyncio
import resource
import time

from lab.peer.protocol import greet, serve_lines

SLOW_HEAD = b"GET /metrics HTTP/1.1\r\nHost: agent\r\nX-Slow: " + b"a" * 4096


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Load:
    def op_run(self, request: dict) -> dict:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return asyncio.run(self.run(request))

    async def run(self, request: dict) -> dict:
        host, port, paths = request["host"], request["port"], request.get("paths", ["/metrics"])
        deadline = time.monotonic() + request.get("seconds", 8)
        latencies: list[float] = []
        errors: dict[str, int] = {}
        slow_closed: list[float] = []

        async def client(index: int) -> None:
            turn = index
            while time.monotonic() < deadline:
                path = paths[turn % len(paths)]
                turn += 1
                started = time.monotonic()
                try:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
                    writer.write(f"GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n".encode())
                    await writer.drain()
                    head = await asyncio.wait_for(reader.readline(), 10)
                    await asyncio.wait_for(reader.read(), 10)
                    writer.close()
                    if b" 200 " in head:
                        latencies.append((time.monotonic() - started) * 1000)
                    else:
                        kind = head.decode(errors="replace").strip() or "empty"
                        errors[kind] = errors.get(kind, 0) + 1
                except (OSError, asyncio.TimeoutError) as error:
                    kind = type(error).__name__
                    errors[kind] = errors.get(kind, 0) + 1

        async def slow(every: float) -> None:
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as error:
                errors[f"slow {type(error).__name__}"] = errors.get(f"slow {type(error).__name__}", 0) + 1
                return
            opened = time.monotonic()
            for byte in SLOW_HEAD:
                if time.monotonic() >= deadline:
                    break
                try:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    if await asyncio.wait_for(reader.read(1024), every) == b"":
                        slow_closed.append(time.monotonic() - opened)
                        return
                except asyncio.TimeoutError:
                    continue
                except OSError:
                    slow_closed.append(time.monotonic() - opened)
                    return
            writer.close()

        tasks = [asyncio.create_task(client(i)) for i in range(request.get("concurrency", 1000))]
        tasks += [asyncio.create_task(slow(request.get("byte_every", 1.0))) for _ in range(request.get("slow", 0))]
        await asyncio.gather(*tasks)
        return {"requests": len(latencies), "errors": errors, "p50_ms": round(percentile(latencies, 0.5), 1),
                "p99_ms": round(percentile(latencies, 0.99), 1), "max_ms": round(max(latencies, default=0), 1),
                "slow_closed": len(slow_closed), "slow_closed_after_s": round(percentile(slow_closed, 0.5), 2),
                "slow_open": request.get("slow", 0) - len(slow_closed)}


def main(role: str, args: list[str]) -> int:
    greet(role)
    serve_lines(Load())
    return 0
