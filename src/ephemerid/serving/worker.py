"""The model's side of the prediction service: ``load`` once, then ``predict`` for each frame.

``python -m ephemerid.serving.worker ENTRY MODEL_DIR`` runs in its own process with the
allow-listed environment (``sandbox.user_env``) and none of the service's keys. It imports the
user's module as the batch harness does (``batch.worker.import_entry``: the same ``load`` /
``predict`` pair), answers ``READY`` with the model's input fields, and then one answer per
``PREDICT`` frame on the pipes it was started with (``wire``). What the user's code prints goes
to stderr, never into the frames. A ``predict`` that raises answers ``ERROR`` and the worker
goes on; a ``load`` that raises answers ``FATAL`` and the worker exits 1.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

try:
    import pyarrow as pa

    from ephemerid.batch.worker import Failed, _last_line, import_entry, to_table
    from ephemerid.serving import wire
except ImportError as exc:  # the model's environment lacks it: main says so as a FATAL frame
    MISSING = f"{exc}"
else:
    MISSING = ""
NEEDS_PYARROW = (
    "the prediction service needs pyarrow in the model's environment ({}): add pyarrow to its "
    "environment (environment.pip, its requirements or its image)"
)


def input_fields(module: ModuleType, model: Any) -> list[dict[str, str | None]]:
    """The columns the model takes: its module's ``INPUT_SCHEMA`` (name -> type) or
    ``INPUT_COLUMNS``, else the loaded model's ``features`` (names of numbers); [] if unknown."""
    declared = getattr(module, "INPUT_SCHEMA", None)
    if isinstance(declared, pa.Schema):
        return [{"name": f.name, "type": str(f.type)} for f in declared]
    if isinstance(declared, dict):
        return [{"name": str(k), "type": str(v)} for k, v in declared.items()]
    columns = getattr(module, "INPUT_COLUMNS", None)
    if columns is not None:
        return [{"name": str(c), "type": None} for c in columns]
    features = getattr(model, "features", None)
    if isinstance(features, list | tuple) and all(isinstance(f, str) for f in features):
        return [{"name": f, "type": "double"} for f in features]
    return []


def answer(module: ModuleType, model: Any, data: bytes) -> tuple[bytes, bytes | memoryview]:
    """One predict frame's answer: ``ROWS`` or ``ERROR`` with a one-line reason."""
    try:
        batch = wire.decode(data)
        value = module.predict(model, batch)
        out = to_table(value)
        if out.num_rows != batch.num_rows:
            raise Failed(f"predict returned {out.num_rows} rows for {batch.num_rows}")
        return wire.ROWS, wire.encode(out)
    except Failed as exc:
        return wire.ERROR, str(exc).encode()
    except Exception as exc:
        traceback.print_exc()  # to stderr: the service's log, never the caller
        return wire.ERROR, f"predict raised {_last_line(exc)}".encode()


def serve(entry: Path, model_dir: Path, source: BinaryIO, sink: BinaryIO) -> int:
    try:
        module = import_entry(entry)
        model = module.load(model_dir)
    except Failed as exc:
        wire.send(sink, wire.FATAL, str(exc).encode())
        return 1
    except Exception as exc:
        traceback.print_exc()
        wire.send(sink, wire.FATAL, f"load raised {_last_line(exc)}".encode())
        return 1
    wire.send(sink, wire.READY, json.dumps({"fields": input_fields(module, model)}).encode())
    while True:
        try:
            kind, data = wire.receive(source)
        except wire.Closed:
            return 0  # the service let this version go
        if kind != wire.PREDICT:
            wire.send(sink, wire.ERROR, f"unknown frame {kind!r}".encode())
            continue
        wire.send(sink, *answer(module, model, data))


def _private_pipes() -> tuple[BinaryIO, BinaryIO]:
    """The frames' pipes, moved off fds 0 and 1: user code's print() goes to stderr instead."""
    source = os.fdopen(os.dup(0), "rb")
    sink = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return source, sink


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m ephemerid.serving.worker ENTRY MODEL_DIR", file=sys.stderr)
        return 2
    source, sink = _private_pipes()
    if MISSING:  # wire is not importable: the frame by hand (4-byte length, kind F)
        reason = NEEDS_PYARROW.format(MISSING).encode()
        sink.write(len(reason).to_bytes(4, "big") + b"F" + reason)
        sink.flush()
        return 1
    try:
        return serve(Path(args[0]), Path(args[1]), source, sink)
    except (BrokenPipeError, wire.Closed):
        return 0


if __name__ == "__main__":
    sys.exit(main())
