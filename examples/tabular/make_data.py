"""Write a synthetic, learnable tabular classification dataset as CSV or Parquet.

Each row has standard-normal features; its class is the argmax of per-class scores
made of a linear term, a nonlinear (sin) term and a little Gaussian noise.  The score
weights depend only on (features, classes), never on the seed, so a model trained on
one seed's rows scores well on another seed's rows.

    python make_data.py train.csv --rows 20000
    python make_data.py score.csv --rows 5000 --seed 1 --no-label
    python make_data.py score.parquet --rows 5000 --seed 1 --no-label

CSV needs only the standard library; a `.parquet` path is written with pyarrow.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from collections.abc import Iterator, Sequence
from itertools import islice
from operator import mul
from pathlib import Path

NOISE = 0.15  # std of the Gaussian noise added to each class score
WAVE = 0.6  # amplitude of the nonlinear term in each class score

Matrix = list[list[float]]


def class_weights(features: int, classes: int) -> tuple[Matrix, Matrix]:
    """Linear and nonlinear score weights, fixed for a given (features, classes)."""
    rng = random.Random(f"ephemerid-tabular-{features}-{classes}")
    scale = 1 / math.sqrt(features)

    def matrix() -> Matrix:
        return [[rng.gauss(0, scale) for _ in range(features)] for _ in range(classes)]

    return matrix(), matrix()


def label_of(x: Sequence[float], linear: Matrix, wave: Matrix, rng: random.Random) -> int:
    scores = [
        sum(map(mul, w, x)) + WAVE * math.sin(2 * sum(map(mul, v, x))) + rng.gauss(0, NOISE)
        for w, v in zip(linear, wave, strict=True)
    ]
    return scores.index(max(scores))


def make_dataset(
    path: str | Path,
    rows: int,
    *,
    features: int = 8,
    classes: int = 3,
    seed: int = 0,
    with_label: bool = True,
) -> None:
    """Stream `rows` rows to `path`: `f0..f{n-1},label`, or `id,f0..f{n-1}` without labels.

    The features depend only on `seed` and `rows`, so a `with_label=False` file matches
    the `with_label=True` file of the same seed row for row.
    """
    if rows < 0 or features < 1 or classes < 2:
        raise ValueError("need rows >= 0, features >= 1 and classes >= 2")
    names = [f"f{j}" for j in range(features)]
    header = [*names, "label"] if with_label else ["id", *names]
    lines = _rows(rows, features, classes, seed)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if Path(path).suffix == ".parquet":
        _write_parquet(path, header, lines, with_label)
        return
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, x, label in lines:
            cells = [f"{v:.4f}" for v in x]
            writer.writerow([*cells, label] if with_label else [i, *cells])


Row = tuple[int, list[float], int]  # (row number, features, label)


def _rows(rows: int, features: int, classes: int, seed: int) -> Iterator[Row]:
    linear, wave = class_weights(features, classes)
    rng = random.Random(seed)
    for i in range(rows):
        x = [rng.gauss(0, 1) for _ in range(features)]
        yield i, x, label_of(x, linear, wave, rng)  # drawn either way: same seed, same x


def _write_parquet(
    path: str | Path, header: list[str], lines: Iterator[Row], with_label: bool
) -> None:
    """The rows as Parquet, 65,536 rows a row group: the features rounded as the CSV holds
    them, as float32 (the precision the model scores them at); `id` and `label` int64."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [(name, pa.int64() if name in ("id", "label") else pa.float32()) for name in header]
    )
    with pq.ParquetWriter(path, schema) as writer:
        while chunk := list(islice(lines, 65536)):
            columns = [[round(x[j], 4) for _, x, _ in chunk] for j in range(len(chunk[0][1]))]
            extra = [label for _, _, label in chunk] if with_label else [i for i, _, _ in chunk]
            data = [*columns, extra] if with_label else [extra, *columns]
            writer.write_table(pa.table(dict(zip(header, data, strict=True)), schema=schema))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="file to write: .csv, or .parquet (needs pyarrow)")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-label", dest="with_label", action="store_false")
    args = parser.parse_args(argv)
    make_dataset(
        args.out,
        args.rows,
        features=args.features,
        classes=args.classes,
        seed=args.seed,
        with_label=args.with_label,
    )


if __name__ == "__main__":
    main()
