"""Per-version counters and a latency histogram, written in the Prometheus text format.

``ephemerid_serving_requests_total`` (answered predicts), ``..._errors_total`` (by status),
``..._rows_total``, ``..._predict_calls_total`` (calls into the model: fewer than requests when
micro-batching coalesces them), ``..._request_seconds`` (a histogram), each labelled with the
model and version; ``..._refused_total`` (by status) counts what was refused before a version
was chosen (keys, limits, bodies).
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from dataclasses import dataclass, field

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PREFIX = "ephemerid_serving"


@dataclass
class _Version:
    requests: int = 0
    rows: int = 0
    errors: Counter[int] = field(default_factory=Counter)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    seconds: float = 0.0


class Metrics:
    def __init__(self) -> None:
        self._versions: dict[tuple[str, int], _Version] = defaultdict(_Version)
        self._refused: Counter[int] = Counter()

    def answered(self, name: str, version: int, status: int, seconds: float, rows: int) -> None:
        item = self._versions[(name, version)]
        item.requests += 1
        if status >= 400:
            item.errors[status] += 1
        else:
            item.rows += rows
        item.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        item.seconds += seconds

    def refused(self, status: int) -> None:
        self._refused[status] += 1

    def text(self, predict_calls: dict[tuple[str, int], int]) -> str:
        lines: list[str] = []
        keys = sorted(set(self._versions) | set(predict_calls))

        def family(name: str, kind: str, what: str) -> None:
            lines.append(f"# HELP {PREFIX}_{name} {what}")
            lines.append(f"# TYPE {PREFIX}_{name} {kind}")

        family("requests_total", "counter", "Predict requests answered, by version.")
        for key in keys:
            lines.append(f"{PREFIX}_requests_total{{{_labels(key)}}} {self._get(key).requests}")
        family("errors_total", "counter", "Predict requests answered with an error, by status.")
        for key in keys:
            for status, count in sorted(self._get(key).errors.items()):
                lines.append(f'{PREFIX}_errors_total{{{_labels(key)},status="{status}"}} {count}')
        family("rows_total", "counter", "Rows predicted, by version.")
        for key in keys:
            lines.append(f"{PREFIX}_rows_total{{{_labels(key)}}} {self._get(key).rows}")
        family("predict_calls_total", "counter", "Calls into the model's predict, by version.")
        for key in keys:
            lines.append(
                f"{PREFIX}_predict_calls_total{{{_labels(key)}}} {predict_calls.get(key, 0)}"
            )
        family("request_seconds", "histogram", "Predict request latency, by version.")
        for key in keys:
            item, total = self._get(key), 0
            for bound, count in zip([*BUCKETS, float("inf")], item.buckets, strict=True):
                total += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'{PREFIX}_request_seconds_bucket{{{_labels(key)},le="{le}"}} {total}')
            lines.append(f"{PREFIX}_request_seconds_sum{{{_labels(key)}}} {item.seconds:.6f}")
            lines.append(f"{PREFIX}_request_seconds_count{{{_labels(key)}}} {total}")
        family("refused_total", "counter", "Requests refused before a version was chosen.")
        for status, count in sorted(self._refused.items()):
            lines.append(f'{PREFIX}_refused_total{{status="{status}"}} {count}')
        return "\n".join(lines) + "\n"

    def _get(self, key: tuple[str, int]) -> _Version:
        return self._versions.get(key) or _Version()


def _labels(key: tuple[str, int]) -> str:
    return f'model="{key[0]}",version="{key[1]}"'
