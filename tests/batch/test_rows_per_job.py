"""``batch.max_rows_per_job``: a job's files split across as many child jobs as it takes for
none to get more than that many rows (Parquet's footers count them; CSV and JSON Lines are
estimated from their first MiB), in input order, a file never split."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from batching import manifest_of, predict_spec, predictions, put_input, register_model, table
from drive import service_with
from ephemerid.batch.fanout import pack
from ephemerid.batch.inputs import file_rows
from ephemerid.errors import SpecError
from ephemerid.record import JobState
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.spec import parse_document, validate_spec
from sweeping import drive_parent

SIZES = [30, 50, 20, 90, 10]  # rows of f0..f4: ids 0..199


@pytest.fixture
def scored(settings: Settings) -> Iterator[Service]:
    with service_with(settings, local_slots=4) as service:
        register_model(service)
        start = 0
        for n, rows in enumerate(SIZES):
            put_input(service, f"incoming/score/f{n}.parquet", table(rows, start), "parquet")
            start += rows
        yield service


def test_no_child_gets_more_rows_than_max_rows_per_job_and_the_rows_stay_in_order(
    scored: Service, code_dir: Path
) -> None:
    batch = {"max_rows_per_job": 80, "keep": ["id"]}
    spec = predict_spec(code_dir, {"data": "incoming/score"}, batch=batch)
    parent = drive_parent(scored, scored.submit(spec, key="by-rows").job.id)
    shards = [j for j in scored.shard_jobs(parent.id) if j is not None]

    assert parent.state is JobState.SUCCEEDED, parent.reason
    groups = [sorted(s.spec.inputs.values()) for s in shards]
    assert groups == [  # consecutive files, 80 rows, 20 + 0 (90 alone), 90, 10
        ["incoming/score/f0.parquet", "incoming/score/f1.parquet"],
        ["incoming/score/f2.parquet"],
        ["incoming/score/f3.parquet"],
        ["incoming/score/f4.parquet"],
    ]
    assert [manifest_of(scored, s).rows for s in shards] == [80, 20, 90, 10]
    assert all(s.spec.batch and s.spec.batch.max_rows_per_job is None for s in shards)
    assert predictions(scored, parent)["id"].to_pylist() == list(range(200))
    assert scored.held_compute() == 0


def test_packing_keeps_name_order_and_gives_a_file_over_the_limit_a_child_of_its_own() -> None:
    files = [("c", 40), ("a", 50), ("b", 50), ("d", 500), ("e", 1)]

    assert pack(files, 100) == [["a", "b"], ["c"], ["d"], ["e"]]
    assert pack(files, 1000) == [["a", "b", "c", "d", "e"]]
    assert pack(files, 1) == [["a"], ["b"], ["c"], ["d"], ["e"]]


def test_rows_are_counted_from_a_parquet_footer_and_estimated_for_a_long_csv(
    scored: Service,
) -> None:
    store = scored.artifacts

    def rows_of(key: str) -> int:
        stat = store.stat(key)
        assert stat is not None
        return file_rows(store, key, stat.size)

    assert rows_of("incoming/score/f3.parquet") == 90
    put_input(scored, "incoming/csv/small.csv", table(7), "csv")
    assert rows_of("incoming/csv/small.csv") == 7  # the whole file: counted
    rows = 200_000  # about 2.8 MB: its first MiB counted, the rest estimated from its bytes
    sink = io.BytesIO()
    pacsv.write_csv(pa.table({"id": range(rows), "x": [1000.25] * rows}), sink)
    put_input(scored, "incoming/csv/big.csv", sink.getvalue())
    assert len(sink.getvalue()) > 2 * 1024 * 1024
    assert abs(rows_of("incoming/csv/big.csv") - rows) < rows * 0.05


def test_shards_and_max_rows_per_job_together_are_refused_naming_both() -> None:
    text = "kind: predict\ncode: .\nentrypoint: s.py\nbatch: {shards: 2, max_rows_per_job: 9}\n"
    with pytest.raises(SpecError, match=r"batch\.shards and batch\.max_rows_per_job"):
        validate_spec(parse_document(text, "spec"))


def test_a_limit_that_would_make_too_many_child_jobs_is_refused_at_submit(
    scored: Service, code_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        put_input(scored, f"incoming/many/g{n}.parquet", table(5, 5 * n), "parquet")
    spec = predict_spec(code_dir, {"data": "incoming/many"}, batch={"max_rows_per_job": 1})
    monkeypatch.setattr("ephemerid.batch.fanout.MAX_SHARDS", 2)
    with pytest.raises(SpecError, match="would make 3 child jobs, more than 2"):
        scored.submit(spec)
    assert scored.list() == []
