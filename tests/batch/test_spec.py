"""The ``batch:`` section of a job spec, and how it travels in the launch."""

from __future__ import annotations

import json

import pytest

from ephemerid.contract import BATCH_CONTRACT, CONTRACT_VERSION, Launch
from ephemerid.errors import SpecError
from ephemerid.spec import parse_document, validate_spec


def parse_spec(text: str):
    return validate_spec(parse_document(text, "spec"))


PREDICT = "kind: predict\ncode: .\nentrypoint: score.py\nmodel: churn@production\n"


def test_a_batch_section_is_read_with_its_defaults() -> None:
    spec = parse_spec(PREDICT + "batch:\n  keep: [id]\n  as: pandas\n")

    assert spec.batch is not None
    assert spec.batch.keep == ["id"] and spec.batch.as_ == "pandas"
    assert spec.batch.rows_per_batch == 65536 and spec.batch.output_format == "parquet"
    assert spec.batch.on_bad_rows == "fail"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "kind: train\ncode: .\nentrypoint: t.py\nbatch: {}\n",
            "'batch' is for predict jobs only",
        ),
        (PREDICT + "batch:\n  shards: 0\n", r"batch.shards"),
        (PREDICT + "batch:\n  rows_per_batch: 0\n", "rows_per_batch"),
        (PREDICT + "batch:\n  output_format: xlsx\n", "output_format"),
        (PREDICT + "batch:\n  keep: [id, id]\n", "batch.keep names id more than once"),
    ],
)
def test_a_bad_batch_section_is_refused_naming_it(text: str, expected: str) -> None:
    with pytest.raises(SpecError, match=expected):
        parse_spec(text)


def test_a_launch_with_a_batch_section_is_contract_3_so_an_older_runner_refuses_it() -> None:
    fields = {
        "job_id": "predict-1",
        "entrypoint": "score.py",
        "args": [],
        "params": {},
        "max_runtime_s": 60,
        "code": "runs/predict-1/code",
        "inputs": {},
        "model": "models/churn/1/files",
    }
    batched = Launch(**fields, batch={"keep": ["id"], "as": "pandas"})
    plain = Launch(**fields)

    assert json.loads(batched.dumps())["contract"] == BATCH_CONTRACT == 3
    assert json.loads(plain.dumps())["contract"] == CONTRACT_VERSION
    again = Launch.loads(batched.dumps())
    assert again.batch is not None and again.batch.as_ == "pandas" and again.batch.keep == ["id"]
