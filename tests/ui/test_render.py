"""The sweep page's pure parts: the best-so-far curve, the scatter, a pruned trial marked."""

from __future__ import annotations

from typing import Any

from ephemerid.functions.callers import Caller
from ephemerid.ui.render import Links, as_json, page
from ephemerid.ui.views import best_so_far, scatter

TRIALS: list[dict[str, Any]] = [
    {"number": 0, "job": "train-0", "state": "SUCCEEDED", "params": {"lr": 0.1}, "value": 0.5},
    {"number": 1, "job": "train-1", "state": "PRUNED", "params": {"lr": 0.9}, "value": None,
     "reason": "pruned at step 3: val_loss 9 behind median 0.6 of 2 finished trials"},
    {"number": 2, "job": "train-2", "state": "SUCCEEDED", "params": {"lr": 0.3}, "value": 0.2},
    {"number": 3, "job": "train-3", "state": "SUCCEEDED", "params": {"lr": 0.05}, "value": 0.7},
]  # fmt: skip


def test_the_best_so_far_curve_keeps_the_best_value_by_then() -> None:
    assert best_so_far(TRIALS, "minimize") == [[0, 0.5], [2, 0.2], [3, 0.2]]
    assert best_so_far(TRIALS, "maximize") == [[0, 0.5], [2, 0.5], [3, 0.7]]


def test_the_scatter_has_the_trials_with_a_value_ordered_by_the_param() -> None:
    assert scatter(TRIALS, "lr") == [[0.05, 0.7], [0.1, 0.5], [0.3, 0.2]]


def test_a_pruned_trial_is_marked_and_its_reason_shown() -> None:
    sweep = {
        "id": "sweep-1", "name": "lin", "state": "RUNNING", "reason": "", "method": "grid",
        "metric": "val_loss", "goal": "minimize", "trials_made": 4, "trials_planned": 4,
        "counts": {"running": 0, "succeeded": 3, "pruned": 1, "failed": 0},
        "best": {"number": 2, "job": "train-2", "value": 0.2}, "cost_usd": 0.0,
        "trials": [{"reason": "", "cost_usd": None, **t} for t in TRIALS], "params": ["lr"],
        "best_curve": best_so_far(TRIALS, "minimize"), "scatter": {"lr": scatter(TRIALS, "lr")},
    }  # fmt: skip
    html = page(
        "sweep.html", Links("", {}), "csrf", caller=Caller("a"), sweep=sweep, sort="", desc=False
    )

    assert html.count('<span class="tag pruned">pruned</span>') == 1
    assert "behind median 0.6" in html
    assert 'class="trial row-succeeded best"' in html  # trial 2


def test_json_in_a_page_cannot_close_its_script_element() -> None:
    text = str(as_json({"x": "</script><script>alert(1)</script>&"}))

    assert "<" not in text and ">" not in text and "&" not in text
