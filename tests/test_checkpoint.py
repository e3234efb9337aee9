"""The checkpoint folder kept in the bucket while a job runs: only what changed is sent again."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, BinaryIO, cast

from drive import Gate, run, service_with, spec_for, text_of, wait_for, write_script
from ephemerid import names
from ephemerid.artifacts import ArtifactStore, Stat, open_artifacts
from ephemerid.checkpoint import CheckpointSync
from ephemerid.runner import Runner
from ephemerid.settings import Settings

PREFIX = "runs/job-1/checkpoint"


def bucket(tmp_path: Path) -> ArtifactStore:
    return open_artifacts(f"file://{tmp_path / 'bucket'}")


def folder(tmp_path: Path, **files: str) -> Path:
    path = tmp_path / "checkpoint"
    path.mkdir(exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return path


def test_each_pass_uploads_only_the_files_changed_since_their_last_upload(tmp_path: Path) -> None:
    store, local = bucket(tmp_path), folder(tmp_path, a="first a", b="first b")
    sync = CheckpointSync(store, local, PREFIX)

    assert sync.sync() == ["a", "b"]
    store.delete(f"{PREFIX}/a")  # were it sent again, it would be back
    (local / "b").write_text("second b, longer")
    (local / "c").write_text("new c")

    assert sync.sync() == ["b", "c"]
    assert sync.sync() == []
    assert store.stat(f"{PREFIX}/a") is None
    assert text_of(store, f"{PREFIX}/b") == "second b, longer"
    assert text_of(store, f"{PREFIX}/c") == "new c"


def test_a_checkpoint_replaced_whole_under_the_same_name_is_sent_again(tmp_path: Path) -> None:
    store, local = bucket(tmp_path), folder(tmp_path, step="3")
    sync = CheckpointSync(store, local, PREFIX)
    sync.sync()
    stat = (local / "step").stat()

    (local / "step.tmp").write_text("4")  # same size, and maybe the same mtime: a new inode
    os.replace(local / "step.tmp", local / "step")
    os.utime(local / "step", ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert sync.sync() == ["step"]
    assert text_of(store, f"{PREFIX}/step") == "4"


def test_what_was_staged_from_the_bucket_is_not_uploaded_again(tmp_path: Path) -> None:
    store, local = bucket(tmp_path), folder(tmp_path, weights="from the last run")
    sync = CheckpointSync(store, local, PREFIX)

    sync.staged()

    assert sync.sync() == []
    assert store.stat(f"{PREFIX}/weights") is None


def test_a_link_out_of_the_folder_is_never_uploaded_and_is_said_once(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the runner's own")
    store, local = bucket(tmp_path), folder(tmp_path, ok="fine")
    (local / "sneaky").symlink_to(secret)
    said: list[str] = []
    sync = CheckpointSync(store, local, PREFIX, skip=lambda name, why: said.append(name))

    assert sync.sync() == ["ok"]
    assert sync.sync() == []
    assert said == ["sneaky"]
    assert store.stat(f"{PREFIX}/sneaky") is None


def test_every_interval_uploads_what_changed_until_told_to_stop(tmp_path: Path) -> None:
    store, local = bucket(tmp_path), folder(tmp_path)
    sync = CheckpointSync(store, local, PREFIX)
    stop, said = threading.Event(), []
    thread = threading.Thread(target=sync.every, args=(0.05, stop, said.append), daemon=True)
    thread.start()

    (local / "step").write_text("1")
    wait_for(lambda: store.stat(f"{PREFIX}/step"), "the periodic pass to upload step")
    stop.set()
    thread.join(timeout=30)

    assert not thread.is_alive()
    assert "checkpoint: uploaded 1 changed file(s)" in said


# -- in the runner ----------------------------------------------------------------------------

WAITS_FOR_ITS_UPLOAD = """
import json, os, pathlib, time
params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
gate = pathlib.Path(params["gate"])
(pathlib.Path(os.environ["EPHEMERID_CHECKPOINT_DIR"]) / "step").write_text("1")
deadline = time.monotonic() + 60 if (gate / "wait").exists() else 0  # the second run only
while not (gate / "upload-held").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
(gate / "went-on").touch()
"""


class HeldCheckpoints:
    """The job's bucket, whose checkpoint writes wait until the test lets them go (a slow link)."""

    def __init__(self, store: ArtifactStore, gate: Path) -> None:
        self.store, self.gate, self.go = store, gate, threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def write(self, key: str, stream: BinaryIO, *, if_absent: bool = False) -> Stat:
        if "/checkpoint/" in key:
            (self.gate / "upload-held").touch()
            self.go.wait(60)
        return self.store.write(key, stream, if_absent=if_absent)


def test_the_runner_uploads_the_checkpoint_while_the_job_runs_and_the_job_never_waits_on_it(
    settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, WAITS_FOR_ITS_UPLOAD)
    with service_with(settings, checkpoint_upload_s=1.0) as service:
        job = run(service, spec_for(code_dir, params=gate.params))  # staged and launched once
        service.artifacts.delete(names.run_key(job.id, names.RESULT_FILE))
        (gate.path / "went-on").unlink()
        (gate.path / "wait").touch()
        held = HeldCheckpoints(service.artifacts, gate.path)
        runner = Runner(cast(ArtifactStore, held), job.id, tmp_path / "node")
        running = threading.Thread(target=runner.run, daemon=True)
        running.start()

        wait_for((gate.path / "went-on").exists, "the job to go on while its upload is held")
        held.go.set()
        running.join(timeout=60)

        assert not running.is_alive()
        assert text_of(service.artifacts, names.run_key(job.id, "checkpoint/step")) == "1"
        assert "succeeded" in text_of(service.artifacts, names.run_key(job.id, "result.json"))
