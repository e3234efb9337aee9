"""Batch prediction: the harness that runs a model's ``load``/``predict`` over streamed batches.

``spec`` (the ``batch:`` section), ``formats`` (Parquet, CSV, JSON Lines in and out),
``manifest`` (the shards written and how a rerun resumes), ``harness`` (the runner's side: all
bucket I/O) and ``worker`` (the user's side: ``load`` once, ``predict`` per batch). See
docs/batch.md.
"""
