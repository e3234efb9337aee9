"""The user's side of the batch harness: ``load`` once, then ``predict`` for each batch.

``python -u -m ephemerid.batch.worker ENTRY IN_FIFO OUT_FIFO ERROR_FILE [--as pandas]`` runs in
the job's own process and environment, with none of the service's credentials. It imports the
user's module ``ENTRY`` by path (not as ``__main__``), reads Arrow IPC record batches from
``IN_FIFO`` (the runner decodes the inputs), and writes one prediction batch of the same row
count for each to ``OUT_FIFO``. The module may declare ``INPUT_COLUMNS`` (names) or
``INPUT_SCHEMA`` (a pyarrow schema, or a dict of name -> type); a stream lacking them is refused
before ``load``. Whatever fails is written to ``ERROR_FILE`` in one line naming the function and
the exception, and the worker exits 1: the runner makes it the job's reason.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import os
import queue
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

try:
    import pyarrow as pa
    import pyarrow.ipc as ipc
except ImportError as exc:  # the job's environment lacks it: main says so
    MISSING = f"{exc}"
else:
    MISSING = ""

PREDICTION = "prediction"  # the name of a single returned array


class Failed(Exception):
    """The reason the worker stops, as the job's reason."""


def import_entry(entry: Path) -> ModuleType:
    sys.path.insert(0, str(entry.parent))
    spec = importlib.util.spec_from_file_location(f"ephemerid_job_{entry.stem}", entry)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would: dataclasses and pickle look it up
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise Failed(f"importing {entry.name} raised {_last_line(exc)}") from exc
    for name in ("load", "predict"):
        if not callable(getattr(module, name, None)):
            raise Failed(f"{entry.name} defines no function {name}(): the harness needs both")
    return module


def check_input(module: ModuleType, schema: pa.Schema) -> None:
    """Refuse a stream lacking the columns (or types) the module declares."""
    declared = getattr(module, "INPUT_SCHEMA", None)
    columns = getattr(module, "INPUT_COLUMNS", None)
    wanted: dict[str, Any] = {}
    if isinstance(declared, pa.Schema):
        wanted = {field.name: field.type for field in declared}
    elif isinstance(declared, dict):
        wanted = {str(k): v for k, v in declared.items()}
    elif columns is not None:
        wanted = {str(name): None for name in columns}
    missing = [name for name in wanted if name not in schema.names]
    if missing:
        raise Failed(
            f"the input lacks column(s) {', '.join(missing)} that the model's "
            f"{'INPUT_SCHEMA' if declared is not None else 'INPUT_COLUMNS'} names "
            f"(the input has {', '.join(schema.names) or 'none'}): nothing was scored"
        )
    mistyped = []
    for name, kind in wanted.items():
        if kind is None:
            continue
        want = kind if isinstance(kind, pa.DataType) else pa.type_for_alias(str(kind))
        if schema.field(name).type != want:
            mistyped.append(f"{name} is {schema.field(name).type}, not {want}")
    if mistyped:
        raise Failed(f"input column types differ from INPUT_SCHEMA: {'; '.join(mistyped)}")


def to_table(value: Any) -> pa.Table:
    """What ``predict`` returned, as a table: a Table/RecordBatch, a pandas DataFrame, a dict
    of column -> array, or one 1-D array (the column ``prediction``)."""
    if isinstance(value, pa.Table):
        return value
    if isinstance(value, pa.RecordBatch):
        return pa.Table.from_batches([value])
    if type(value).__name__ == "DataFrame" and hasattr(value, "columns"):
        return pa.Table.from_pandas(value, preserve_index=False)
    if isinstance(value, dict):
        return pa.table({str(k): _array(v) for k, v in value.items()})
    try:
        return pa.table({PREDICTION: _array(value)})
    except (TypeError, ValueError, pa.ArrowException) as exc:
        raise Failed(
            f"predict returned {type(value).__name__}: return a pyarrow Table, a pandas "
            "DataFrame, a dict of column -> array, or one 1-D array"
        ) from exc


def _array(value: Any) -> pa.Array:
    if isinstance(value, pa.Array | pa.ChunkedArray):
        return value
    if hasattr(value, "ndim") and value.ndim != 1:
        raise Failed(f"predict returned an array of {value.ndim} dimensions: return 1-D columns")
    return pa.array(value.tolist() if hasattr(value, "tolist") else list(value))


def prefetched(reader: Any) -> Iterator[pa.RecordBatch]:
    """The stream's batches, the next read in a thread while the current one is scored."""
    ahead: queue.Queue[Any] = queue.Queue(maxsize=1)

    def read() -> None:
        try:
            for batch in reader:
                ahead.put(batch)
        except BaseException as exc:  # the runner closed the stream early
            ahead.put(exc)
        ahead.put(None)

    threading.Thread(target=read, daemon=True).start()
    while (item := ahead.get()) is not None:
        if isinstance(item, BaseException):
            raise Failed(f"reading the input stream failed: {item}")
        yield item


def serve(entry: Path, source: Any, sink: Any, as_pandas: bool, model_dir: Path) -> None:
    """Score every batch of ``source`` into ``sink`` (the FIFOs, opened by ``main``)."""
    module = import_entry(entry)
    try:
        reader = ipc.open_stream(source)
    except pa.ArrowInvalid:  # the runner sent nothing: it says why
        return
    check_input(module, reader.schema)
    if as_pandas:
        _need_pandas()
    try:
        model = module.load(model_dir)
    except Exception as exc:
        traceback.print_exc()
        raise Failed(f"load raised {_last_line(exc)}") from exc
    writer = None
    for batch in prefetched(reader):
        table = pa.Table.from_batches([batch])
        try:
            value = module.predict(model, table.to_pandas() if as_pandas else table)
        except Exception as exc:
            traceback.print_exc()
            raise Failed(f"predict raised {_last_line(exc)}") from exc
        out = to_table(value)
        if writer is None:
            schema = out.schema
            writer = ipc.new_stream(sink, schema)
        elif out.schema != schema:
            out = _like(out, schema)
        columns = [column.combine_chunks() for column in out.columns]
        writer.write_batch(pa.record_batch(columns, schema=out.schema))  # one answer a batch
    if writer is not None:
        writer.close()


def _like(table: pa.Table, schema: pa.Schema) -> pa.Table:
    if table.schema.names != schema.names:
        raise Failed(
            f"predict returned columns {', '.join(table.schema.names)}, but earlier batches "
            f"{', '.join(schema.names)}: return the same columns for every batch"
        )
    try:
        return table.cast(schema)
    except (pa.ArrowException, ValueError) as exc:
        raise Failed(
            f"predict returned other column types than for earlier batches: {exc}"
        ) from exc


def _need_pandas() -> None:
    try:
        import pandas  # noqa: F401
    except ImportError:
        raise Failed(
            "batch.as: pandas needs pandas in the job's environment: add it "
            "(environment.pip: [pandas]) or use batch.as: arrow"
        ) from None


def _last_line(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return lines[-1].strip() if lines else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ephemerid.batch.worker", description=__doc__)
    parser.add_argument("entry", type=Path)
    parser.add_argument("inbound", type=Path)
    parser.add_argument("outbound", type=Path)
    parser.add_argument("error_file", type=Path)
    parser.add_argument("--as", dest="as_", default="arrow", choices=["arrow", "pandas"])
    args, _ = parser.parse_known_args(argv)
    model_dir = Path(os.environ.get("EPHEMERID_MODEL_DIR", "model"))
    if MISSING:
        args.error_file.write_text(
            f"the batch harness needs pyarrow in the job's environment ({MISSING}): add "
            "pyarrow to its environment (environment.pip, its requirements or its image)"
        )
        return 1
    # the error file is written before the FIFOs close: the runner reads it once they have
    with args.inbound.open("rb") as source, args.outbound.open("wb", buffering=0) as sink:
        try:
            serve(args.entry, source, sink, args.as_ == "pandas", model_dir)
        except Failed as exc:
            args.error_file.write_text(str(exc))
            print(f"[ephemerid batch] {exc}", flush=True)
            return 1
        except BrokenPipeError:  # the runner stopped reading: it says why
            return 1
    return 0


def exit_now(code: int) -> NoReturn:
    """End the process once its answers are out: the atexit handlers (the user's too) run and
    the output is flushed, but not the interpreter's teardown, which took PyTorch 0.7 s here, on
    the job's critical path (the runner waits for this process to end)."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
