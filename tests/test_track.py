"""``ephemerid.track``: what user code logs, and the one reader of what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ephemerid import track
from ephemerid.names import ENV_METRICS
from ephemerid.track import Latest, Metric


def test_each_metric_is_one_line_the_reader_gives_back_with_its_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "metrics.jsonl"
    monkeypatch.setenv(ENV_METRICS, str(path))

    track.log_metric("loss", 0.5, step=1)
    track.log_metric("loss", 0.25, step=2)
    track.log_metric("accuracy", 1)
    track.log_param("lr", 0.01)

    latest = track.latest(path.read_text().splitlines())
    assert latest["loss"].value == 0.25 and latest["loss"].step == 2
    assert latest["accuracy"].value == 1.0 and latest["accuracy"].step is None
    assert latest["loss"].at is not None
    assert set(latest) == {"loss", "accuracy"}


@pytest.mark.parametrize(
    ("call", "said"),
    [
        (lambda: track.log_metric("loss", "abc"), "metric 'loss' must be a number, got 'abc'"),
        (lambda: track.log_metric("loss", float("nan")), "metric 'loss' must be a finite number"),
        (lambda: track.log_metric("loss", 1, step=1.5), "metric 'loss': step must be a whole"),
        (lambda: track.log_metric("", 1), "a metric's name must be a non-empty string"),
    ],
)
def test_a_bad_metric_is_refused_naming_it(call: object, said: str) -> None:
    with pytest.raises(ValueError, match=said.replace("(", r"\(")):
        call()  # type: ignore[operator]


def test_the_reader_reads_a_growing_file_whole_lines_only_and_skips_what_is_no_metric() -> None:
    lines = [
        Metric("loss", 0.5, 1, 1.0).line(),
        "not json at all",
        json.dumps({"type": "metric", "name": "loss", "value": "0.1"}),  # a string: no number
        json.dumps({"type": "metric", "name": "loss", "value": 0.2, "step": True}),
        json.dumps({"type": "param", "name": "lr", "value": 0.01}),
        Metric("loss", 0.25, 2, 2.0).line(),
    ]
    data = ("\n".join(lines) + "\n").encode()
    latest = Latest()

    first = latest.feed(data[:-10])  # the last line is cut: it waits for its end
    rest = latest.feed(data[-10:])

    assert [(m.value, m.step) for m in first] == [(0.5, 1)]
    assert [(m.value, m.step) for m in rest] == [(0.25, 2)]
    assert latest.values() == {"loss": 0.25}
    assert latest.metrics["loss"] == Metric("loss", 0.25, 2, 2.0)
