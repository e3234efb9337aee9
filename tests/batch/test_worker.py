"""The worker's side of the protocol, for real: ``python -m ephemerid.batch.worker`` over two
FIFOs, fed Arrow IPC batches by the test as the runner would."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from ephemerid.batch.worker import PREDICTION
from ephemerid.envs.build import package_path


def serve(
    tmp_path: Path, body: str, batches: list[pa.RecordBatch], python: tuple[str, ...] = ()
) -> tuple[int, list, str]:
    """Run the worker over ``body`` fed ``batches``: (exit code, answers, its error file)."""
    entry = tmp_path / "model.py"
    entry.write_text(textwrap.dedent(body))
    inbound, outbound, error = tmp_path / "in.fifo", tmp_path / "out.fifo", tmp_path / "error.txt"
    os.mkfifo(inbound)
    os.mkfifo(outbound)
    command = [*(python or (sys.executable,)), "-m", "ephemerid.batch.worker", str(entry)]
    command.append(str(inbound))
    env = {**os.environ}
    if python:  # another interpreter: ephemerid from PYTHONPATH alone, as in a job's environment
        env["PYTHONPATH"] = str(package_path(tmp_path))
    proc = subprocess.Popen([*command, str(outbound), str(error)], env=env)
    answers: list[pa.RecordBatch] = []

    def feed() -> None:
        try:
            with (
                inbound.open("wb", buffering=0) as sink,
                ipc.new_stream(sink, batches[0].schema) as writer,
            ):
                for batch in batches:
                    writer.write_batch(batch)
        except BrokenPipeError:
            pass

    def unblock() -> None:  # a worker that ended before opening its FIFOs lets us go on
        proc.wait(timeout=60)
        for path, flags in ((inbound, os.O_RDONLY), (outbound, os.O_WRONLY)):
            with contextlib.suppress(OSError):
                os.close(os.open(path, flags | os.O_NONBLOCK))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    threading.Thread(target=unblock, daemon=True).start()
    with outbound.open("rb") as source:
        try:
            answers = list(ipc.open_stream(source))
        except pa.ArrowInvalid:
            answers = []
    code = proc.wait(timeout=60)
    feeder.join(timeout=60)
    return code, answers, error.read_text() if error.exists() else ""


def batch(*xs: float) -> pa.RecordBatch:
    return pa.record_batch({"x": list(xs)})


@pytest.mark.parametrize(
    "returned",
    [
        "[v * 2 for v in batch['x'].to_pylist()]",
        "{'prediction': batch['x'].to_pylist() and [v * 2 for v in batch['x'].to_pylist()]}",
        "pa.table({'prediction': [v * 2 for v in batch['x'].to_pylist()]})",
        "pa.table({'prediction': [v * 2 for v in batch['x'].to_pylist()]}).to_batches()[0]",
    ],
)
def test_each_batch_gets_one_answer_of_its_rows_whatever_predict_returns(
    tmp_path: Path, returned: str
) -> None:
    body = f"""
        import pyarrow as pa
        def load(model_dir):
            return None
        def predict(model, batch):
            return {returned}
    """

    code, answers, error = serve(tmp_path, body, [batch(1, 2, 3), batch(4)])

    assert (code, error) == (0, "")
    assert [a.column(PREDICTION).to_pylist() for a in answers] == [[2, 4, 6], [8]]


def test_load_runs_once_before_the_first_batch(tmp_path: Path) -> None:
    body = """
        calls = []
        def load(model_dir):
            calls.append("load")
            return calls
        def predict(model, batch):
            return [len(model)] * batch.num_rows
    """

    code, answers, _ = serve(tmp_path, body, [batch(1), batch(2), batch(3)])

    assert code == 0
    assert [a.column(PREDICTION).to_pylist() for a in answers] == [[1], [1], [1]]


def test_a_module_defining_a_dataclass_loads_as_an_imported_module_would(
    tmp_path: Path,
) -> None:
    body = """
        from __future__ import annotations
        from dataclasses import dataclass
        @dataclass
        class Model:
            factor: float
        def load(model_dir):
            return Model(3.0)
        def predict(model, batch):
            return [v * model.factor for v in batch["x"].to_pylist()]
    """

    code, answers, error = serve(tmp_path, body, [batch(1, 2)])

    assert (code, error) == (0, "")
    assert [a.column(PREDICTION).to_pylist() for a in answers] == [[3.0, 6.0]]


def test_a_declared_schema_the_stream_does_not_match_is_refused_before_load(
    tmp_path: Path,
) -> None:
    body = """
        import pyarrow as pa
        INPUT_SCHEMA = pa.schema([("x", pa.int64())])
        def load(model_dir):
            raise AssertionError("load ran")
        def predict(model, batch):
            return batch["x"]
    """

    code, answers, error = serve(tmp_path, body, [batch(1.5)])

    assert code == 1 and answers == []
    assert error == "input column types differ from INPUT_SCHEMA: x is double, not int64"


def test_a_module_without_predict_is_refused_naming_it(tmp_path: Path) -> None:
    code, _, error = serve(tmp_path, "def load(model_dir):\n    return 1\n", [batch(1)])

    assert code == 1
    assert error == "model.py defines no function predict(): the harness needs both"


def test_predict_returning_something_else_is_refused_saying_what_to_return(
    tmp_path: Path,
) -> None:
    body = """
        def load(model_dir):
            return None
        def predict(model, batch):
            return 42
    """

    code, _, error = serve(tmp_path, body, [batch(1)])

    assert code == 1
    assert error.startswith("predict returned int: return a pyarrow Table")


def test_an_environment_without_pyarrow_fails_saying_to_add_it(tmp_path: Path) -> None:
    body = "def load(model_dir):\n    return 1\ndef predict(model, batch):\n    return batch\n"

    # -S: no site-packages, so no pyarrow; ephemerid from PYTHONPATH, as in a job's environment
    code, answers, error = serve(tmp_path, body, [batch(1)], (sys.executable, "-S"))

    assert code == 1 and answers == []
    assert error.startswith("the batch harness needs pyarrow in the job's environment")


def test_the_worker_ends_at_once_after_its_answers_yet_runs_the_modules_atexit_handlers(
    tmp_path: Path,
) -> None:
    done = tmp_path / "cleaned-up.txt"
    body = f"""
        import atexit, pathlib
        def cleanup():
            pathlib.Path({str(done)!r}).write_text("done")
        atexit.register(cleanup)
        def load(model_dir):
            return None
        def predict(model, batch):
            return batch["x"]
    """

    code, answers, error = serve(tmp_path, body, [batch(1, 2)])

    assert (code, error) == (0, "")
    assert [a.column(PREDICTION).to_pylist() for a in answers] == [[1, 2]]
    assert done.read_text() == "done"
