"""Reading a Parquet input holds about one row group at a time, however many the file has."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS = 40_000  # a row group: 4 float64 columns, about 1.3 MB
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked test process
READ = """
import pathlib, sys
from ephemerid.batch.formats import BadRows, batches
rows = 0
with open(sys.argv[1], "rb") as source:
    for batch in batches(source, "parquet", 10_000, BadRows(skip=False)):
        rows += batch.num_rows
status = pathlib.Path("/proc/self/status").read_text().splitlines()
print(rows, next(line.split()[1] for line in status if line.startswith("VmHWM:")))
"""


def peak_kib(tmp_path: Path, groups: int) -> int:
    """The peak resident memory of a process reading a file of ``groups`` row groups."""
    path = tmp_path / f"in-{groups}.parquet"
    rng = np.random.default_rng(groups)
    data = pa.table({f"f{i}": rng.standard_normal(groups * ROWS) for i in range(4)})
    pq.write_table(data, path, row_group_size=ROWS, compression="none")
    done = subprocess.run(
        [sys.executable, "-c", READ, str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rows, peak = (int(word) for word in done.stdout.split())
    assert rows == groups * ROWS
    return peak


def test_reading_a_parquet_file_holds_one_row_group_not_the_whole_file(tmp_path: Path) -> None:
    small, large = peak_kib(tmp_path, 4), peak_kib(tmp_path, 40)  # 5 MB and 51 MB of columns

    assert large - small < 16 * 1024  # held: a few row groups, never the other 36 (46 MB)
