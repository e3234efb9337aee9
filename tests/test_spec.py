"""JobSpec: valid specs load from YAML and JSON; bad ones say which field is wrong and the fix."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ephemerid.errors import SpecError
from ephemerid.spec import (
    MAX_RUNTIME_LIMIT,
    JobKind,
    ModelRef,
    Spot,
    load_spec,
    parse_duration,
    validate_spec,
)

TRAIN_YAML = """\
kind: train
name: churn-train
code: ./project
entrypoint: train.py
args: [--fast]
inputs:
  data: file:///bucket/incoming/train/churn.csv
params: {epochs: 8, lr: 0.01}
register_as: {name: churn, alias: production}
compute:
  gpus: 1
  skus: [Standard_NC4as_T4_v3, Standard_NC6s_v3]
  spot: prefer
  max_runtime: 30m
idempotency_key: blob:incoming/train/churn.csv@0x1
"""

PREDICT = {
    "kind": "predict",
    "code": "./project",
    "entrypoint": "predict.py",
    "inputs": {"data": "file:///bucket/incoming/score/x.csv"},
    "model": "churn@production",
}

TRAIN = {"kind": "train", "code": "./project", "entrypoint": "train.py"}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def refusal(data: Any) -> str:
    with pytest.raises(SpecError) as caught:
        validate_spec(data)
    return str(caught.value)


# --- valid specs ---------------------------------------------------------------------------


def test_train_spec_loads_from_yaml_with_every_field(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "train.yaml", TRAIN_YAML))

    assert spec.kind is JobKind.TRAIN
    assert spec.label == "churn-train"
    assert spec.args == ["--fast"]
    assert spec.inputs == {"data": "file:///bucket/incoming/train/churn.csv"}
    assert spec.params == {"epochs": 8, "lr": 0.01}
    assert spec.register_as is not None
    assert (spec.register_as.name, spec.register_as.alias) == ("churn", "production")
    assert spec.compute.gpus == 1
    assert spec.compute.skus == ["Standard_NC4as_T4_v3", "Standard_NC6s_v3"]
    assert spec.compute.spot is Spot.PREFER
    assert spec.compute.max_runtime == 30 * 60
    assert spec.idempotency_key == "blob:incoming/train/churn.csv@0x1"


def test_predict_spec_loads_from_json_text(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "predict.json", json.dumps(PREDICT)))

    assert spec.kind is JobKind.PREDICT
    assert spec.model == ModelRef(name="churn", alias="production")
    assert spec.register_as is None


def test_yaml_and_json_of_the_same_spec_load_equal(tmp_path: Path) -> None:
    from_yaml = load_spec(write(tmp_path, "train.yaml", TRAIN_YAML))
    as_json = json.dumps(from_yaml.model_dump(mode="json", exclude_none=True))

    assert load_spec(write(tmp_path, "train.json", as_json)) == from_yaml


def test_a_spec_without_a_name_is_labelled_by_its_entrypoint() -> None:
    assert validate_spec({**TRAIN, "entrypoint": "jobs/fit_model.py"}).label == "fit_model"


def test_compute_defaults_to_no_gpu_no_spot_and_one_hour() -> None:
    compute = validate_spec(TRAIN).compute

    assert (compute.gpus, compute.spot, compute.max_runtime) == (0, Spot.NEVER, 3600)


# --- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("30m", 30 * 60),
        ("2h", 2 * 3600),
        ("1h30m", 3600 + 30 * 60),
        ("1d", 24 * 3600),
        (" 2H ", 2 * 3600),
        ("45", 45),
        (45, 45),
    ],
)
def test_durations_are_read_in_seconds(text: Any, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert validate_spec({**TRAIN, "compute": {"max_runtime": text}}).compute.max_runtime == seconds


@pytest.mark.parametrize("text", ["", "soon", "90x", "1.5h", "h", "-5", "30m1h", "1 h", True])
def test_a_bad_duration_is_refused_with_examples_of_good_ones(text: Any) -> None:
    with pytest.raises(ValueError, match="30m"):
        parse_duration(text)

    message = refusal({**TRAIN, "compute": {"max_runtime": text}})
    assert "compute.max_runtime" in message


@pytest.mark.parametrize("value", [0, "0s", -5, MAX_RUNTIME_LIMIT + 1, "8d"])
def test_max_runtime_must_be_positive_and_at_most_a_week(value: Any) -> None:
    assert "compute.max_runtime" in refusal({**TRAIN, "compute": {"max_runtime": value}})


def test_an_infinite_max_runtime_in_yaml_is_a_spec_error(tmp_path: Path) -> None:
    path = write(tmp_path, "s.yaml", TRAIN_YAML.replace("max_runtime: 30m", "max_runtime: .inf"))

    with pytest.raises(SpecError, match=r"compute\.max_runtime"):
        load_spec(path)


# --- model references ----------------------------------------------------------------------


def test_a_model_reference_names_an_alias_or_a_version() -> None:
    by_alias = ModelRef.parse("churn@production")
    by_version = ModelRef.parse("churn:3")

    assert (by_alias.name, by_alias.alias, by_alias.version) == ("churn", "production", None)
    assert (by_version.name, by_version.alias, by_version.version) == ("churn", None, 3)
    assert str(by_alias) == "churn@production"
    assert str(by_version) == "churn:3"


@pytest.mark.parametrize(
    "text",
    [
        "churn",
        "",
        "@prod",
        "churn@",
        "churn:",
        "churn:0",
        "churn:-1",
        "churn:x",
        "../x@prod",
        "churn@../prod",
        "bad name@prod",
        "churn:1.5",
    ],
)
def test_a_bad_model_reference_is_refused_with_both_forms_shown(text: str) -> None:
    with pytest.raises(ValueError, match=r"name@alias.*name:version"):
        ModelRef.parse(text)


def test_a_bad_model_reference_in_a_spec_names_the_model_field() -> None:
    message = refusal({**PREDICT, "model": "churn"})

    assert "model" in message
    assert "name@alias" in message


@pytest.mark.parametrize(
    "model",
    [{"name": "../../etc", "alias": "prod"}, {"name": "churn"}],
)
def test_a_model_given_as_a_mapping_is_checked_like_the_text_form(model: dict[str, Any]) -> None:
    assert "model" in refusal({**PREDICT, "model": model})


# --- errors name the field and the fix -----------------------------------------------------


def test_malformed_yaml_says_which_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "kind: train\ncode: ./x\nentrypoint: [train.py\n")

    with pytest.raises(SpecError, match=r"line \d+") as caught:
        load_spec(path)
    assert str(path) in str(caught.value)


def test_an_unreadable_spec_file_is_a_spec_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(SpecError, match=r"nope\.yaml"):
        load_spec(missing)


@pytest.mark.parametrize("document", ["- a\n- b\n", "just text\n", "42\n", ""])
def test_a_spec_that_is_not_a_mapping_is_refused(tmp_path: Path, document: str) -> None:
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(write(tmp_path, "s.yaml", document))


def test_an_unknown_field_is_named_with_remove_or_check_spelling() -> None:
    message = refusal({**TRAIN, "entrypiont": "train.py"})

    assert "'entrypiont'" in message
    assert "remove it or check its spelling" in message


def test_an_unknown_nested_field_is_named_with_its_path() -> None:
    message = refusal({**TRAIN, "compute": {"gpu": 1}})

    assert "compute.gpu" in message
    assert "remove it" in message


def test_a_wrong_type_names_the_field() -> None:
    message = refusal({**TRAIN, "compute": {"gpus": "lots"}})

    assert "compute.gpus" in message
    assert "integer" in message


def test_a_missing_entrypoint_is_named_and_asked_for() -> None:
    message = refusal({"kind": "train", "code": "./x"})

    assert "'entrypoint'" in message
    assert "add it" in message


def test_every_problem_is_listed_not_just_the_first() -> None:
    message = refusal({"kind": "train", "colour": "red", "compute": {"gpus": "lots"}})

    for field in ("entrypoint", "code", "colour", "compute.gpus"):
        assert field in message


@pytest.mark.parametrize(
    ("entrypoint", "fix"),
    [
        ("../train.py", "relative path inside code"),
        ("jobs/../../train.py", "relative path inside code"),
        ("/etc/train.py", "relative path inside code"),
        ("jobs\\train.py", "relative path inside code"),
        ("train.sh", "Python file"),
        ("train", "Python file"),
    ],
)
def test_an_entrypoint_outside_code_or_not_python_is_refused(entrypoint: str, fix: str) -> None:
    message = refusal({**TRAIN, "entrypoint": entrypoint})

    assert entrypoint in message
    assert fix in message


def test_a_predict_job_without_a_model_is_told_to_add_one() -> None:
    predict = {k: v for k, v in PREDICT.items() if k != "model"}

    assert "needs 'model: name@alias'" in refusal(predict)


def test_a_train_job_with_a_model_is_told_to_use_register_as() -> None:
    message = refusal({**TRAIN, "model": "churn@production"})

    assert "takes no 'model'" in message
    assert "register_as" in message


def test_a_predict_job_with_register_as_is_told_to_remove_it() -> None:
    message = refusal({**PREDICT, "register_as": {"name": "churn"}})

    assert "remove 'register_as'" in message


def test_a_bad_spot_value_lists_the_allowed_ones() -> None:
    message = refusal({**TRAIN, "compute": {"spot": "sometimes"}})

    assert "compute.spot" in message
    for allowed in ("never", "prefer", "only"):
        assert allowed in message


@pytest.mark.parametrize("name", ["bad name", "-leading-dash", "a" * 65, "x/y", "../up"])
def test_a_job_name_outside_the_pattern_is_refused(name: str) -> None:
    assert "name" in refusal({**TRAIN, "name": name})


# --- untrusted input -----------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

FIELDS = [
    "kind",
    "name",
    "code",
    "entrypoint",
    "args",
    "inputs",
    "params",
    "model",
    "register_as",
    "compute",
    "idempotency_key",
]
COMPUTE_FIELDS = ["backend", "gpus", "skus", "spot", "max_runtime"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_arbitrary_json_either_validates_or_is_a_spec_error(data: dict[str, Any]) -> None:
    with contextlib.suppress(SpecError):
        validate_spec(data)


@settings(max_examples=300, deadline=None)
@given(
    base=st.sampled_from([TRAIN, PREDICT]),
    top=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3),
    compute=st.dictionaries(st.sampled_from(COMPUTE_FIELDS), json_values, max_size=3),
)
def test_a_valid_spec_with_random_field_values_validates_or_is_a_spec_error(
    base: dict[str, Any], top: dict[str, Any], compute: dict[str, Any]
) -> None:
    try:
        validate_spec({**base, **top, "compute": compute})
    except SpecError as exc:
        assert str(exc).startswith("job spec is not valid")


@given(st.one_of(json_values.filter(lambda v: not isinstance(v, dict))))
def test_anything_but_a_mapping_is_a_spec_error(data: Any) -> None:
    with pytest.raises(SpecError, match="must be a mapping"):
        validate_spec(data)


def test_params_with_shell_metacharacters_round_trip_intact(tmp_path: Path) -> None:
    nasty = "; rm -rf / $(x) `y` | & > < 'q' \"dq\" \\ \n"
    spec = validate_spec({**TRAIN, "params": {"cmd": nasty, "list": [nasty]}, "args": [nasty]})

    assert spec.model_dump()["params"] == {"cmd": nasty, "list": [nasty]}
    assert spec.model_dump()["args"] == [nasty]
    dumped = json.dumps(spec.model_dump(mode="json"))
    assert load_spec(write(tmp_path, "again.json", dumped)) == spec
