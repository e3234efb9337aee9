"""How the harness writes a Parquet shard: a dictionary only for the prediction columns that
are not floating point (classes, labels), never for the kept columns (ids) or the scores."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ephemerid.batch.formats import ShardWriter


def test_a_parquet_shard_dictionary_encodes_only_non_float_prediction_columns(
    tmp_path: Path,
) -> None:
    rows = 10_000
    data = pa.table(
        {
            "id": pa.array(range(rows), pa.int64()),
            "label": pa.array([f"class-{i % 3}" for i in range(rows)]),
            "prediction": pa.array([i % 3 for i in range(rows)], pa.int64()),
            "probability": pa.array([i / rows for i in range(rows)], pa.float32()),
        }
    )
    writer = ShardWriter(tmp_path / "part-00000.parquet", "parquet", keep=["id"])
    writer.write(data.slice(0, 4000))
    writer.write(data.slice(4000))
    writer.close()

    shard = pq.ParquetFile(tmp_path / "part-00000.parquet")
    group = shard.metadata.row_group(0)
    coded = {
        group.column(i).path_in_schema: any("DICT" in e for e in group.column(i).encodings)
        for i in range(group.num_columns)
    }
    assert coded == {"id": False, "label": True, "prediction": True, "probability": False}
    assert writer.rows == rows and shard.read().equals(data)
