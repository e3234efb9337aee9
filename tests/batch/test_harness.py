"""Predict jobs under the batch harness, for real: through the service on local compute."""

from __future__ import annotations

import re

import pytest

from batching import (
    MODEL,
    manifest_of,
    predict_spec,
    predictions,
    put_input,
    register_model,
    shard_table,
    table,
)
from drive import log_of, run
from ephemerid.batch.manifest import MANIFEST_FILE, predictions_key
from ephemerid.errors import SpecError
from ephemerid.record import ComputeState, JobState
from ephemerid.service import Service

EXT = {"parquet": "parquet", "csv": "csv", "jsonl": "jsonl"}


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_each_input_format_is_scored_with_the_kept_columns_carried(
    service: Service, code_dir, fmt: str
) -> None:
    register_model(service, offset=0.5)
    put_input(service, f"incoming/a.{EXT[fmt]}", table(10), fmt)
    put_input(service, f"incoming/b.{EXT[fmt]}", table(7, start=10), fmt)
    batch = {"keep": ["id"], "rows_per_batch": 4, "max_rows_per_shard": 6}
    body = MODEL.replace(  # the kept columns never reach predict
        "def predict(model, batch):",
        "def predict(model, batch):\n    assert batch.column_names == ['x', 'tag']",
    )
    spec = predict_spec(code_dir, {"rows": "incoming"}, body, batch=batch)

    job = run(service, spec)

    assert job.state is JobState.SUCCEEDED, job.reason
    assert job.compute_state is ComputeState.RELEASED
    out = predictions(service, job)
    assert out.column_names == ["id", "prediction"]
    assert out.column("id").to_pylist() == list(range(17))
    assert out.column("prediction").to_pylist() == [2.0 * i + 0.5 for i in range(17)]
    manifest = manifest_of(service, job)
    assert manifest.complete and manifest.rows == 17
    assert [s.rows for s in manifest.shards] == [6, 6, 5]
    assert manifest.shards[1].inputs[0].key == f"incoming/a.{EXT[fmt]}"
    assert [(r.start, r.end) for r in manifest.shards[1].inputs] == [(6, 10), (0, 2)]
    assert manifest.shards[0].key.endswith("predictions/part-00000.parquet")
    assert all(s.key in job.outputs for s in manifest.shards)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_each_output_format_is_written_as_asked(service: Service, code_dir, fmt: str) -> None:
    register_model(service)
    put_input(service, "incoming/a.parquet", table(5), "parquet")
    spec = predict_spec(
        code_dir,
        {"rows": "incoming/a.parquet"},
        batch={"keep": ["id", "tag"], "output_format": fmt},
    )

    job = run(service, spec)

    assert job.state is JobState.SUCCEEDED, job.reason
    (shard,) = manifest_of(service, job).shards
    assert shard.key.endswith(f"part-00000.{fmt}")
    out = shard_table(service, shard.key)
    assert out.column("tag").to_pylist() == [f"t{i}" for i in range(5)]
    assert out.column("prediction").to_pylist() == [2.0 * i + 0.5 for i in range(5)]


def test_a_module_defining_load_and_predict_runs_under_the_harness_without_a_batch_section(
    service: Service, code_dir
) -> None:
    register_model(service)
    put_input(service, "incoming/a.csv", table(3), "csv")

    job = run(service, predict_spec(code_dir, {"rows": "incoming/a.csv"}))

    assert job.state is JobState.SUCCEEDED, job.reason
    assert predictions(service, job).column("prediction").to_pylist() == [0.5, 2.5, 4.5]


def test_predict_may_return_one_array_a_table_or_a_record_batch(service: Service, code_dir) -> None:
    body = MODEL.replace(
        'return {"prediction": pc.add(pc.multiply(batch["x"], 2), model)}',
        "n = batch.num_rows\n"
        "    if batch['id'][0].as_py() == 0: return [1] * n\n"
        "    return pa.table({'prediction': pa.array([1] * n)}).to_batches()[0]",
    )
    register_model(service)
    put_input(service, "incoming/a.csv", table(6), "csv")
    spec = predict_spec(code_dir, {"rows": "incoming/a.csv"}, body, batch={"rows_per_batch": 3})

    job = run(service, spec)

    assert job.state is JobState.SUCCEEDED, job.reason
    assert predictions(service, job).column("prediction").to_pylist() == [1] * 6


def test_the_model_declaring_input_columns_the_input_lacks_is_refused_before_any_scoring(
    service: Service, code_dir
) -> None:
    body = MODEL + '\nINPUT_COLUMNS = ["x", "age", "income"]\n'
    body = body.replace(
        "def predict(model, batch):", "def predict(model, batch):\n    print('SCORED')"
    )
    register_model(service)
    put_input(service, "incoming/a.csv", table(3), "csv")

    job = run(service, predict_spec(code_dir, {"rows": "incoming/a.csv"}, body))

    assert job.state is JobState.FAILED
    assert "lacks column(s) age, income" in job.reason
    assert "SCORED" not in log_of(service, job.id)
    assert job.compute_state is ComputeState.RELEASED


def test_a_keep_column_the_input_lacks_fails_naming_it(service: Service, code_dir) -> None:
    register_model(service)
    put_input(service, "incoming/a.csv", table(3), "csv")
    spec = predict_spec(code_dir, {"rows": "incoming/a.csv"}, batch={"keep": ["id", "customer"]})

    job = run(service, spec)

    assert job.state is JobState.FAILED
    assert "input 'incoming/a.csv' lacks the batch.keep column(s) customer" in job.reason


CSV_WITH_BAD_ROW = b"id,x,tag\n0,0.0,a\n1,1.0,b\n2,2.0\n3,3.0,d\n"


def test_a_malformed_csv_row_fails_the_job_naming_the_file_and_line(
    service: Service, code_dir
) -> None:
    register_model(service)
    put_input(service, "incoming/bad.csv", CSV_WITH_BAD_ROW)

    job = run(service, predict_spec(code_dir, {"rows": "incoming/bad.csv"}))

    assert job.state is JobState.FAILED
    assert "input 'incoming/bad.csv' has a malformed CSV row at line 4" in job.reason
    assert "on_bad_rows: skip" in job.reason


def test_malformed_csv_rows_are_skipped_and_counted_when_asked(service: Service, code_dir) -> None:
    register_model(service)
    put_input(service, "incoming/bad.csv", CSV_WITH_BAD_ROW)
    spec = predict_spec(
        code_dir, {"rows": "incoming/bad.csv"}, batch={"keep": ["id"], "on_bad_rows": "skip"}
    )

    job = run(service, spec)

    assert job.state is JobState.SUCCEEDED, job.reason
    assert predictions(service, job).column("id").to_pylist() == [0, 1, 3]
    assert manifest_of(service, job).bad_rows == 1
    assert "skipped 1 malformed row(s)" in log_of(service, job.id)


def test_predict_returning_the_wrong_number_of_rows_fails_the_job_leaving_no_partial_shard(
    service: Service, code_dir
) -> None:
    body = MODEL.replace(
        "def predict(model, batch):",
        "def predict(model, batch):\n    if batch['x'][0].as_py() == 6:\n        return [1]",
    )
    register_model(service)
    put_input(service, "incoming/a.csv", table(10), "csv")
    batch = {"rows_per_batch": 2, "max_rows_per_shard": 4}
    spec = predict_spec(code_dir, {"rows": "incoming/a.csv"}, body, batch=batch)

    job = run(service, spec)

    assert job.state is JobState.FAILED
    assert "predict returned 1 row(s) for a batch of 2 (input 'incoming/a.csv', rows 6-7)" in (
        job.reason
    )
    manifest = manifest_of(service, job)
    assert not manifest.complete
    assert [(s.start, s.rows) for s in manifest.shards] == [(0, 4)]  # shard 1 never listed
    assert job.compute_state is ComputeState.RELEASED


def _has_manifest(service: Service, job) -> bool:
    return service.artifacts.stat(predictions_key(job.id, MANIFEST_FILE)) is not None


def test_a_model_that_fails_to_load_fails_the_job_naming_load_and_the_error(
    service: Service, code_dir
) -> None:
    body = MODEL.replace(
        "    return float(", "    raise RuntimeError('weights are corrupt')\n    return float("
    )
    register_model(service)
    put_input(service, "incoming/a.csv", table(4), "csv")

    job = run(service, predict_spec(code_dir, {"rows": "incoming/a.csv"}, body))

    assert job.state is JobState.FAILED
    assert job.reason == "load raised RuntimeError: weights are corrupt"
    assert job.compute_state is ComputeState.RELEASED


def test_predict_raising_fails_the_job_naming_predict(service: Service, code_dir) -> None:
    body = MODEL.replace("def predict(model, batch):", "def predict(model, batch):\n    1 / 0")
    register_model(service)
    put_input(service, "incoming/a.csv", table(4), "csv")

    job = run(service, predict_spec(code_dir, {"rows": "incoming/a.csv"}, body))

    assert job.state is JobState.FAILED
    assert job.reason == "predict raised ZeroDivisionError: division by zero"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "input 'incoming/a.csv' is empty (0 bytes)"),
        (b"id,x,tag\n", "input 'incoming/a.csv' has no rows"),
    ],
)
def test_an_empty_input_fails_naming_it(
    service: Service, code_dir, data: bytes, expected: str
) -> None:
    register_model(service)
    put_input(service, "incoming/a.csv", data)

    job = run(service, predict_spec(code_dir, {"rows": "incoming/a.csv"}))

    assert job.state is JobState.FAILED
    assert expected in job.reason


def test_an_input_of_an_unknown_format_fails_naming_it_and_the_formats(
    service: Service, code_dir
) -> None:
    register_model(service)
    put_input(service, "incoming/a.xlsx", b"PK\x03\x04 not a table")

    job = run(service, predict_spec(code_dir, {"rows": "incoming/a.xlsx"}))

    assert job.state is JobState.FAILED
    assert "input 'incoming/a.xlsx' is not a format the batch harness reads" in job.reason
    assert ".csv" in job.reason and ".parquet" in job.reason


def test_a_plain_predict_script_still_runs_as_a_script_with_its_inputs_staged(
    service: Service, code_dir
) -> None:
    body = """
        import os, pathlib
        rows = (pathlib.Path(os.environ["EPHEMERID_INPUT_DIR"]) / "rows" / "a.csv").read_text()
        out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"]) / "scored.txt"
        out.write_text(str(len(rows.splitlines())))
    """
    register_model(service)
    put_input(service, "incoming/a.csv", table(4), "csv")

    job = run(service, predict_spec(code_dir, {"rows": "incoming/a.csv"}, body))

    assert job.state is JobState.SUCCEEDED, job.reason
    assert any(key.endswith("outputs/scored.txt") for key in job.outputs)
    assert not _has_manifest(service, job)


def test_the_users_process_sees_no_storage_connection(
    service: Service, code_dir, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "DefaultEndpointsProtocol=https;AccountName=x;AccountKey=c2VjcmV0"
    monkeypatch.setenv("EPHEMERID_STORAGE", secret)
    body = MODEL.replace(
        "def load(model_dir):",
        "import os\ndef load(model_dir):\n"
        "    assert not any('AccountKey' in v for v in os.environ.values()), 'leaked'\n"
        "    assert 'EPHEMERID_STORAGE' not in os.environ, 'leaked'",
    )
    register_model(service)
    put_input(service, "incoming/a.csv", table(2), "csv")

    job = run(service, predict_spec(code_dir, {"rows": "incoming/a.csv"}, body))

    assert job.state is JobState.SUCCEEDED, job.reason
    assert predictions(service, job).column("prediction").to_pylist() == [0.5, 2.5]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"incoming/s/a.csv": b"id,x\n1,1\n", "incoming/s/b.xlsx": b"PK"}, "incoming/s/b.xlsx"),
        ({"incoming/s/a.csv": b""}, "input 'incoming/s/a.csv' is empty (0 bytes)"),
    ],
)
def test_a_batch_job_with_an_input_it_cannot_read_is_refused_at_submit_before_any_compute(
    service: Service, code_dir, files: dict[str, bytes], expected: str
) -> None:
    register_model(service)
    for key, data in files.items():
        put_input(service, key, data)
    spec = predict_spec(code_dir, {"rows": "incoming/s"}, batch={"keep": ["id"]})

    with pytest.raises(SpecError, match=re.escape(expected)) as refused:
        service.submit(spec)

    assert str(refused.value).startswith("inputs.rows: input ")
    assert service.store.list() == []


def test_as_pandas_gives_predict_a_dataframe_and_takes_one_back(service: Service, code_dir) -> None:
    body = """
        def load(model_dir):
            return 10

        def predict(model, frame):
            assert type(frame).__name__ == "DataFrame", type(frame)
            return frame.assign(prediction=frame["x"] + model)[["prediction"]]
    """
    register_model(service)
    put_input(service, "incoming/a.jsonl", table(3), "jsonl")
    spec = predict_spec(
        code_dir, {"rows": "incoming/a.jsonl"}, body, batch={"keep": ["id"], "as": "pandas"}
    )

    job = run(service, spec)

    assert job.state is JobState.SUCCEEDED, job.reason
    out = predictions(service, job)
    assert out.column_names == ["id", "prediction"]
    assert out.column("prediction").to_pylist() == [10.0, 11.0, 12.0]


def test_a_harness_job_past_its_max_runtime_is_timed_out_not_failed(
    service: Service, code_dir
) -> None:
    body = MODEL.replace(
        "def predict(model, batch):", "def predict(model, batch):\n    time.sleep(600)"
    )
    register_model(service)
    put_input(service, "incoming/a.csv", table(4), "csv")
    spec = predict_spec(
        code_dir, {"rows": "incoming/a.csv"}, "import time\n" + body, compute={"max_runtime": 2}
    )

    job = run(service, spec)

    assert job.state is JobState.TIMED_OUT, job.reason
    assert "max_runtime" in job.reason
    assert job.compute_state is ComputeState.RELEASED
