"""A job runs with the interpreter it was submitted from, whoever starts it later."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

from drive import Gate, finish, held_spec, log_of, service_with, spec_for, write_script
from ephemerid.service import Service
from ephemerid.settings import Settings

NEEDS_THE_PACKAGE = "import jobonly\nprint('found', jobonly.WORD)\n"
SUBMIT_FROM_HERE = """
import json, sys
from ephemerid.app import build_service
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec
service = build_service(Settings.from_env({}, home=sys.argv[1], local_slots=1))
spec = JobSpec.model_validate({"kind": "train", "code": sys.argv[2], "entrypoint": "job.py"})
print(json.dumps(service.submit(spec).job.to_json()))
service.close()
"""


def job_venv(root: Path) -> Path:
    """A virtualenv seeing this one's packages, plus ``jobonly``, which this one lacks."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    [site] = root.glob("lib/python*/site-packages")
    (site / "parent.pth").write_text(
        "\n".join([sysconfig.get_paths()["purelib"], *[p for p in sys.path if p]]) + "\n"
    )
    (site / "jobonly.py").write_text("WORD = 'only in the job venv'\n")
    return root / "bin" / "python"


def test_a_waiting_job_started_from_another_interpreter_runs_with_its_own(
    settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    python = job_venv(tmp_path / "job-venv")
    write_script(code_dir, NEEDS_THE_PACKAGE)
    gate = Gate(tmp_path / "gate")
    with service_with(settings, local_slots=1) as service:
        holder = service.submit(held_spec(code_dir, gate)).job  # takes the one slot
        submitted = subprocess.run(
            [str(python), "-c", SUBMIT_FROM_HERE, str(settings.home), str(code_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert submitted.returncode == 0, submitted.stderr
        waiting = json.loads(submitted.stdout)
        gate.open()
        finish(service, holder.id)  # this process (no jobonly here) starts the waiting job
        done = finish(service, waiting["id"])
        log = log_of(service, done.id)

    assert waiting["state"] == "WAITING_FOR_CAPACITY"
    assert done.state.value == "SUCCEEDED", log
    assert "found only in the job venv" in log
    assert waiting["python"] == done.python == str(python)


def test_a_job_records_the_interpreter_of_the_process_that_submitted_it(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")

    job = finish(service, service.submit(spec_for(code_dir)).job.id)

    assert job.python == sys.executable
