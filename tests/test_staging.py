"""Code snapshots: what of a local code folder a job takes with it, and what it leaves out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drive import cleaned_up, spec_for, write_script
from ephemerid import names
from ephemerid.app import build_service
from ephemerid.artifacts import get_bytes
from ephemerid.errors import SpecError
from ephemerid.service import Service
from ephemerid.settings import Settings


def snapshot_of(service: Service, job_id: str) -> tuple[str, list[str]]:
    """The job's code snapshot: its prefix and the files its manifest lists."""
    launch = json.loads(get_bytes(service.artifacts, names.run_key(job_id, names.JOB_FILE)))
    manifest = json.loads(get_bytes(service.artifacts, f"{launch['code']}.json"))
    return launch["code"], manifest["files"]


def tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_homes_inside_the_code_folder_never_go_into_its_snapshots(code_dir: Path) -> None:
    write_script(code_dir, "print('hi')\n")
    tree(code_dir, {"old-home/jobs.db": "", "old-home/bucket/runs/x.json": "{}"})  # another home
    settings = Settings.from_env({}, home=code_dir / ".ephemerid", grace_s=2.0)

    with cleaned_up(build_service(settings)) as service:
        first = service.submit(spec_for(code_dir)).job
        second = service.submit(spec_for(code_dir)).job
        one, files = snapshot_of(service, first.id)
        two, _ = snapshot_of(service, second.id)

    assert files == ["job.py"]
    assert one == two  # the jobs.db and snapshots the first submit left changed nothing


def test_gitignore_and_ephemeridignore_leave_out_what_they_name(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    tree(
        code_dir,
        {
            ".gitignore": "data/\n*.log\n",
            ".ephemeridignore": "# not for the job\nsecrets.txt\n!keep.log\n",
            "data/train.csv": "a,b\n1,2\n",
            "run.log": "noise",
            "keep.log": "wanted",
            "secrets.txt": "hunter2",
            "pkg/.gitignore": "local.cfg\n",
            "pkg/local.cfg": "mine",
            "pkg/model.py": "x = 1\n",
            ".git/config": "[core]\n",
        },
    )

    job = service.submit(spec_for(code_dir)).job
    _, files = snapshot_of(service, job.id)

    assert files == [
        ".ephemeridignore",
        ".gitignore",
        "job.py",
        "keep.log",
        "pkg/.gitignore",
        "pkg/model.py",
    ]


def test_code_over_the_limit_is_refused_naming_the_largest_folders_and_storing_nothing(
    settings: Settings, code_dir: Path
) -> None:
    write_script(code_dir, "print('never runs')\n")
    tree(code_dir, {"data/big.csv": "x" * 6000, "models/w.bin": "y" * 3000, "util.py": "z = 1\n"})
    tree(code_dir, {"ignored/huge.bin": "w" * 50_000, ".ephemeridignore": "ignored/\n"})

    with cleaned_up(build_service(settings.model_copy(update={"code_limit_bytes": 8192}))) as svc:
        with pytest.raises(SpecError) as refused:
            svc.submit(spec_for(code_dir))
        stored = svc.store.list()
        written = list(svc.artifacts.list(f"{names.RUNS}/"))

    message = str(refused.value)
    assert "more than the 8192-byte limit" in message
    assert "data/ (5.9 KB), models/ (2.9 KB)" in message
    assert "ignored/" not in message
    assert ".ephemeridignore" in message and "EPHEMERID_CODE_LIMIT_BYTES" in message
    assert stored == [] and written == []
