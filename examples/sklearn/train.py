"""Train a scikit-learn classifier on CSV files, in the job's own environment.

Needs scikit-learn, which ephemerid does not install: the job declares it
(``environment: {requirements: requirements.txt}``) and runs with that environment's Python.
Reads every ``*.csv`` (``f0..fN,label``, as ``../tabular/make_data.py`` writes) under
``$EPHEMERID_INPUT_DIR/data/``; writes ``model/model.joblib`` and ``model/model.json`` to
``$EPHEMERID_OUTPUT_DIR`` and logs ``val_accuracy``. Exit code 2 on bad input.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import joblib
import sklearn
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import train_test_split

from ephemerid import track


def read_rows(folder: Path) -> tuple[list[str], list[list[float]], list[int]]:
    files = sorted(folder.rglob("*.csv")) if folder.is_dir() else []
    if not files:
        raise ValueError(f"no *.csv files under {folder}")
    features: list[str] = []
    x: list[list[float]] = []
    y: list[int] = []
    for path in files:
        with path.open(newline="") as stream:
            reader = csv.reader(stream)
            header = next(reader, [])
            if "label" not in header:
                raise ValueError(f"{path.name} has no 'label' column")
            label = header.index("label")
            features = [h for i, h in enumerate(header) if i != label]
            for row in reader:
                y.append(int(row[label]))
                x.append([float(v) for i, v in enumerate(row) if i != label])
    return features, x, y


def main() -> int:
    params = json.loads(Path(os.environ.get("EPHEMERID_PARAMS", "params.json")).read_text())
    input_dir = Path(os.environ.get("EPHEMERID_INPUT_DIR", "input")) / "data"
    output = Path(os.environ.get("EPHEMERID_OUTPUT_DIR", "output")) / "model"
    try:
        features, x, y = read_rows(input_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, random_state=0)
    model = HistGradientBoostingClassifier(max_iter=int(params.get("max_iter", 100)))
    model.fit(x_train, y_train)
    score = float(model.score(x_val, y_val))
    track.log_metric("val_accuracy", score)
    output.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, output / "model.joblib")
    meta = {"features": features, "val_accuracy": score, "sklearn": sklearn.__version__}
    (output / "model.json").write_text(json.dumps(meta, indent=2))
    print(f"val_accuracy {score:.3f} on {len(y_val)} rows (scikit-learn {sklearn.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
