"""Tables as a user copies from them: ids and URLs whole at any width, one style everywhere."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from drive import spec_for, write_script
from ephemerid.cli.render import jobs_table
from ephemerid.record import JobRecord

EPH = Path(sys.executable).with_name("eph")
MODEL_SCRIPT = """
import os, pathlib
model = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"]) / "model"
model.mkdir()
(model / "weights.txt").write_text("1 2 3")
"""


def narrow_env(tmp_path: Path) -> dict[str, str]:
    """A 40-column console on no terminal (stderr is a pipe), as in CI logs or `2>file`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHEMERID_")}
    return {**env, "EPHEMERID_HOME": str(tmp_path / "home"), "COLUMNS": "40", "NO_COLOR": "1"}


@pytest.mark.parametrize("width", [20, 40, 60])
def test_the_jobs_table_never_cuts_a_job_id_at_any_terminal_width(
    width: int, code_dir: Path
) -> None:
    jobs = [
        JobRecord(id=f"{kind}-41ef3a1811{n}c", key=f"k{n}", spec=spec_for(code_dir), source="t")
        for n, kind in enumerate(["train", "predict"])
    ]
    out = io.StringIO()

    Console(file=out, width=width, force_terminal=True, color_system=None).print(jobs_table(jobs))

    lines = out.getvalue().splitlines()
    for job in jobs:
        assert any(job.id in line for line in lines), out.getvalue()
    assert "…" not in out.getvalue()


def test_list_and_models_list_share_one_style_and_keep_ids_whole_off_a_terminal(
    tmp_path: Path, code_dir: Path
) -> None:
    write_script(code_dir, MODEL_SCRIPT)
    env = narrow_env(tmp_path)
    flags = ["--code", str(code_dir), "--entrypoint", "job.py", "--register", "churn", "--json"]
    submitted = subprocess.run(
        [str(EPH), "submit", *flags], capture_output=True, text=True, env=env
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]

    shown = [
        subprocess.run([str(EPH), *c], capture_output=True, text=True, env=env, timeout=60).stderr
        for c in (["list"], ["models", "list"])
    ]

    for table in shown:
        lines = table.splitlines()
        header = next(n for n, line in enumerate(lines) if line.split()[:1] == ["job"])
        assert set(lines[header + 1].strip()) == {"─"}  # the one header rule, no box around
        assert any(line.split()[:1] == [job_id] for line in lines[header + 2 :]), table


def test_eph_dev_on_a_narrow_non_terminal_prints_urls_and_paths_unbroken(tmp_path: Path) -> None:
    (tmp_path / "ephemerid.yaml").write_text("rules: []\n")
    home = tmp_path / "a-home-folder-with-a-rather-long-name"
    env = narrow_env(tmp_path)
    command = [str(EPH), "dev", "--port", "0", "--home", str(home)]
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    ) as dev:
        try:
            assert dev.stderr is not None
            shown = []
            for line in dev.stderr:  # bounded by the timeout below if it never says it
                shown.append(line)
                if "job events follow" in line:
                    break
        finally:
            dev.send_signal(signal.SIGINT)
            dev.communicate(timeout=30)
    text = "".join(shown)

    url = re.search(r"POST (http://127\.0\.0\.1:\d+)/api/jobs \(function key\)", text)
    assert url is not None, text
    webhook = f"{url[1]}/runtime/webhooks/blobs?functionName=Host.Functions.on_blob_created"
    assert webhook in text
    assert f"file://{home}/bucket/incoming/{{name}}" in text
    assert f"(kept in {home / 'devhost-keys.json'})" in text
