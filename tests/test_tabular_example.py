"""The tabular example's data and its load/predict pair, in-process (the demo runs them as jobs)."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import EXAMPLES

TABULAR = EXAMPLES / "tabular"


@pytest.fixture
def example() -> Iterator[tuple[ModuleType, ModuleType, ModuleType]]:
    """make_data, predict and tabular imported as the job imports them (their folder first)."""
    sys.path.insert(0, str(TABULAR))
    try:
        import make_data
        import predict
        import tabular

        yield make_data, predict, tabular
    finally:
        sys.path.remove(str(TABULAR))
        for name in ("make_data", "predict", "tabular"):  # no other test sees these names
            sys.modules.pop(name, None)


@pytest.fixture
def model_dir(example: tuple[ModuleType, ModuleType, ModuleType], tmp_path: Path) -> Path:
    """An untrained network saved as train.py saves a model: model.pt and model.json."""
    import torch

    _, _, tabular = example
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save(tabular.build_model(8, 16, 3).state_dict(), folder / "model.pt")
    meta = {"features": [f"f{j}" for j in range(8)], "classes": 3, "hidden": 16}
    meta.update(mean=[0.0] * 8, std=[1.0] * 8)
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_a_parquet_score_file_holds_the_csv_files_rows(
    example: tuple[ModuleType, ModuleType, ModuleType], tmp_path: Path
) -> None:
    make_data, _, _ = example
    make_data.make_dataset(tmp_path / "s.csv", 300, seed=1, with_label=False)
    make_data.make_dataset(tmp_path / "s.parquet", 300, seed=1, with_label=False)

    table = pq.read_table(tmp_path / "s.parquet")
    with (tmp_path / "s.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))

    assert table.column_names == ["id", *(f"f{j}" for j in range(8))]
    assert table["id"].to_pylist() == [int(r["id"]) for r in rows] == list(range(300))
    for name in ("f0", "f7"):
        assert table[name].type == pa.float32()
        assert table[name].to_pylist() == pytest.approx([float(r[name]) for r in rows], abs=1e-6)


def test_predict_answers_each_row_with_a_class_and_its_probability(
    example: tuple[ModuleType, ModuleType, ModuleType], model_dir: Path, tmp_path: Path
) -> None:
    make_data, predict, _ = example
    make_data.make_dataset(tmp_path / "s.parquet", 500, seed=1, with_label=False)
    features = pq.read_table(tmp_path / "s.parquet").drop_columns(["id"])  # as keep: [id] does

    scored = pa.table(predict.predict(predict.load(model_dir), features))

    assert scored.column_names == ["prediction", "probability"]
    assert scored.num_rows == 500
    assert set(scored["prediction"].to_pylist()) <= {0, 1, 2}
    assert all(1 / 3 - 1e-6 <= p <= 1.0 for p in scored["probability"].to_pylist())


def test_predict_refuses_a_batch_without_the_models_features_naming_them(
    example: tuple[ModuleType, ModuleType, ModuleType], model_dir: Path
) -> None:
    _, predict, tabular = example
    batch = pa.table({f"f{j}": [0.5] for j in range(7)})  # no f7

    with pytest.raises(tabular.DataError, match="lacks feature column"):
        predict.predict(predict.load(model_dir), batch)
