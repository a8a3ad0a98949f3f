"""The agent's output, parsed one way for every lab: logfmt log lines and Prometheus text."""

from __future__ import annotations

import re

_LOGFMT = re.compile(r'([A-Za-z0-9_.-]+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict[str, str]:
    fields = {}
    for key, value in _LOGFMT.findall(line):
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        fields[key] = value
    return fields


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """One /metrics scrape: ``value(name, **labels)`` sums the samples whose labels include ``labels``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: list[tuple[str, dict, float]] = []
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            match = _SAMPLE.match(line)
            if match:
                labels = dict(_LABEL.findall(match.group(2) or ""))
                self.samples.append((match.group(1), labels, float(match.group(3))))

    def matching(self, name: str, **labels: str) -> list[tuple[dict, float]]:
        return [(l, v) for n, l, v in self.samples if n == name and all(l.get(k) == x for k, x in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        return sum(v for _, v in self.matching(name, **labels))

    def get(self, name: str, **labels: str) -> float | None:
        """Like ``value``, but None when no sample matches."""
        return self.value(name, **labels) if self.has(name, **labels) else None

    def has(self, name: str, **labels: str) -> bool:
        return bool(self.matching(name, **labels))

    def families(self) -> set[str]:
        return set(re.findall(r"^# TYPE (\S+) ", self.text, re.M))
