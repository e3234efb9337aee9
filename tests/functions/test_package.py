"""The deployment package imports the way Azure imports it, from nothing but what it ships."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_remote_style_build_imports_function_app_and_lists_its_functions(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app"
    app.mkdir()
    for name in ("function_app.py", "host.json", "requirements.txt"):
        shutil.copy(ROOT / name, app / name)
    target = app / ".python_packages" / "lib" / "site-packages"
    # As a remote build does: pip install -r requirements.txt --target .python_packages/...
    # (requirements.txt names this checkout's package, so pip runs from the checkout).
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", str(ROOT / "requirements.txt"), "--target", str(target)],
        cwd=ROOT, check=True, capture_output=True,
    )  # fmt: skip
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import function_app, ephemerid; "
        "assert ephemerid.__file__.startswith(sys.argv[1]), ephemerid.__file__; "
        "print(' '.join(sorted(f.get_function_name() for f in function_app.app.get_functions())))"
    )
    # -S: no site-packages of this interpreter, only the package's own folder.
    base = getattr(sys, "_base_executable", sys.executable)
    done = subprocess.run(
        [base, "-S", "-c", probe, str(target)], cwd=app, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == sorted(
        ["cancel_job", "get_job", "job_logs", "list_jobs", "list_rejected", "on_blob_created",
         "on_job_message", "on_job_queue_message", "on_run_result", "submit_job", "tick"]
    )  # fmt: skip
