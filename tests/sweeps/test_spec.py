"""Bad sweeps are refused with what was wrong and what to do, before anything is stored or
rented; any document at all gets a SpecError, never another exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ephemerid.errors import SpecError
from ephemerid.service import Service
from ephemerid.spec import JobSpec
from ephemerid.sweeps import SweepSpec, validate_any, validate_sweep
from sweeping import sweep_data

GOOD = {"method": "random", "space": {"lr": {"uniform": [0.1, 0.2]}}, "max_trials": 2}


def refusal(search: dict[str, Any], **fields: Any) -> str:
    with pytest.raises(SpecError) as refused:
        validate_sweep(sweep_data(Path("/code"), search, **fields))
    return " ".join(str(refused.value).split())


@pytest.mark.parametrize(
    ("search", "says"),
    [
        ({**GOOD, "space": {}}, "the search space is empty"),
        ({**GOOD, "space": {"lr": {"uniform": [0.5, 0.1]}}}, "low 0.5 is above high 0.1"),
        ({**GOOD, "space": {"lr": {"loguniform": [0, 1]}}}, "low must be above 0"),
        ({**GOOD, "space": {"lr": {"normal": [0, 1]}}}, "unknown distribution 'normal'"),
        ({**GOOD, "space": {"n": {"int": [1.5, 3]}}}, "two whole numbers"),
        ({**GOOD, "space": {"n": []}}, "search.space.n is an empty list"),
        ({**GOOD, "space": {"n": [1, 1]}}, "lists a value twice"),
        ({**GOOD, "space": {"n": [{"a": 1}]}}, "cannot be a choice"),
        ({**GOOD, "max_parallel": 0}, "max_parallel"),
        ({**GOOD, "method": "bayes"}, "search.metric is missing, and method bayes ranks"),
        ({**GOOD, "early_stop": "median"}, "early_stop compares trials by it"),
        ({**GOOD, "early_stop": "hyperband", "metric": "m"}, "early_stop"),
        ({"method": "random", "space": GOOD["space"]}, "search.max_trials is missing"),
        ({"method": "grid", "space": GOOD["space"]}, "lr is a continuous range"),
        ({**GOOD, "max_trials": 10**6}, "max_trials"),
        ({**GOOD, "method": "annealing"}, "method"),
    ],
)
def test_a_bad_search_is_refused_naming_the_problem(search: dict[str, Any], says: str) -> None:
    assert says in refusal(search)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"trial": {"kind": "predict"}}, "a sweep's trial is a train job"),
        ({"trial": {"idempotency_key": "k"}}, "each trial's key is derived"),
        ({"trial": {"register_as": {"name": "m"}}}, "use the sweep's register_best"),
        ({"trial": {"entrypoint": "train.sh"}}, "must be a Python file"),
        ({"trial": {"compute": {"gpus": 99}}}, "trial.compute.gpus"),
        ({"register_best": {"name": "m"}}, "register_best needs search.metric"),
        ({"surprise": 1}, "unknown field 'surprise'"),
    ],
)
def test_a_bad_trial_or_sweep_field_is_refused(fields: dict[str, Any], says: str) -> None:
    assert says in refusal(GOOD, **fields)


def test_kind_sweep_is_a_sweep_and_any_other_document_a_job() -> None:
    sweep = validate_any(sweep_data(Path("/code"), GOOD))
    job = validate_any({"kind": "train", "code": "/code", "entrypoint": "t.py"})

    assert isinstance(sweep, SweepSpec) and isinstance(job, JobSpec)
    assert sweep.search.trials == 2


def test_a_grid_runs_its_points_and_at_most_max_trials() -> None:
    grid = {"method": "grid", "space": {"a": [1, 2, 3], "b": {"int": [0, 10, 5]}}}
    grid["space"]["b"] = {"int": [0, 10], "step": 5}
    assert validate_sweep(sweep_data(Path("/c"), grid)).search.trials == 9
    assert validate_sweep(sweep_data(Path("/c"), {**grid, "max_trials": 4})).search.trials == 4


def test_a_sweep_over_the_configured_trials_or_with_missing_code_stores_and_rents_nothing(
    sweeps: Service, tmp_path: Path
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('hi')\n")
    too_many = validate_sweep(sweep_data(code, {**GOOD, "max_trials": 501}))
    missing = validate_sweep(sweep_data(tmp_path / "nowhere", GOOD))

    with pytest.raises(SpecError, match="EPHEMERID_SWEEP_MAX_TRIALS"):
        sweeps.submit(too_many)
    with pytest.raises(SpecError, match="nowhere"):
        sweeps.submit(missing)
    assert sweeps.list() == []
    assert sweeps.held_compute() == 0


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
KEYS = st.sampled_from(
    ["method", "space", "metric", "goal", "max_trials", "max_parallel", "early_stop", "seed"]
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(KEYS, JSON | st.sampled_from(["grid", "random", "bayes", "median"])))
def test_any_search_document_is_a_sweep_or_a_spec_error(search: dict[str, Any]) -> None:
    try:
        spec = validate_sweep(sweep_data(Path("/code"), search))
    except SpecError:
        return
    assert spec.search.trials >= 1
    assert spec.search.dimensions
