"""Whether a job runs under the batch harness: light, so the runner imports pyarrow only then.

A predict job does when its launch has a ``batch`` section, or its entrypoint defines top-level
``load`` and ``predict`` (found by parsing the file, never by importing it in the runner).
"""

from __future__ import annotations

import ast
from pathlib import Path

from ephemerid.batch.spec import BatchSpec
from ephemerid.contract import Launch


def wanted(launch: Launch, entry: Path) -> BatchSpec | None:
    """The harness's settings when this job runs under it, else None (a plain script)."""
    if launch.model is None:  # a train job
        return None
    if launch.batch is not None:
        return launch.batch
    try:
        tree = ast.parse(entry.read_bytes(), filename=str(entry))
    except (SyntaxError, ValueError):
        return None  # it runs as a script, and Python says what is wrong
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    return BatchSpec.model_validate({}) if {"load", "predict"} <= defined else None
