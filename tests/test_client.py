"""The Python API (``ephemerid.Client``): a notebook submits, waits, reads and compares runs on the
embedded default, with no CLI command running: the home's agent moves the jobs on."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import ephemerid
from drive import wait_for, write_script
from ephemerid.agent import AgentLock, stop
from ephemerid.client import WaitTimedOut
from ephemerid.errors import BadInput, NotFound, SpecError
from ephemerid.record import JobState

EPH = Path(sys.executable).with_name("eph")
TRAIN = """
import json, os, pathlib
from ephemerid import track
lr = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())["lr"]
for step in range(3):
    track.log_metric("loss", lr * (3 - step), step=step)
print(f"trained with lr={lr}", flush=True)
out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
(out / "model").mkdir()
(out / "model" / "weights.bin").write_bytes(b"w" * 100)
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One home for the module, reached as a notebook reaches it: through EPHEMERID_HOME."""
    home = tmp_path_factory.mktemp("api") / "home"
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith("EPHEMERID_")]:
        if name != "EPHEMERID_AGENT_IDLE_S":
            del os.environ[name]
    os.environ["EPHEMERID_HOME"] = str(home)
    try:
        yield home
    finally:
        stop(home)
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="module")
def client(home: Path) -> Iterator[ephemerid.Client]:
    with ephemerid.Client() as client:
        yield client


@pytest.fixture(scope="module")
def code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("code")
    write_script(folder, TRAIN, "train.py")
    return folder


@pytest.fixture(scope="module")
def runs(client: ephemerid.Client, code: Path) -> list[ephemerid.Job]:
    """Two finished runs, lr 0.5 and 0.1, submitted and awaited through the API alone."""
    jobs = [client.submit(code=code, params={"lr": lr}, key=f"lr-{lr}") for lr in (0.5, 0.1)]
    for job in jobs:
        job.wait(timeout=60)
    return jobs


def test_a_submitted_job_runs_to_the_end_with_no_command_driving_it(
    client: ephemerid.Client, code: Path, home: Path
) -> None:
    job = client.submit(code=code, entrypoint="train.py", params={"lr": 0.2}, key="undriven")

    assert AgentLock(home).holder() is not None  # the home's agent was started
    wait_for(lambda: job.state is JobState.SUCCEEDED, "the agent to finish the job", 60)
    assert job.record.python == sys.executable
    assert job.record.owner.startswith("cli:")
    job.wait(timeout=60)  # and its compute given back


def test_wait_returns_the_finished_record_with_metrics_logs_and_outputs(
    runs: list[ephemerid.Job], tmp_path: Path
) -> None:
    job = runs[0]

    record = job.wait(timeout=60)
    written = job.outputs.download(tmp_path / "out")

    assert record.state is JobState.SUCCEEDED and record.compute_state.value == "released"
    assert job.metrics == {"loss": 0.5}
    assert "trained with lr=0.5" in "".join(job.logs())
    assert "trained with lr=0.5" in "".join(job.logs(follow=True))  # ends with the job
    assert [(o.name, o.size) for o in job.outputs.list()] == [("model/weights.bin", 100)]
    assert written == [(tmp_path / "out" / "model" / "weights.bin").resolve()]
    assert (tmp_path / "out" / "model" / "weights.bin").read_bytes() == b"w" * 100


def test_history_gives_every_step_of_each_metric(runs: list[ephemerid.Job]) -> None:
    assert runs[1].history() == {"loss": [(0, 0.30000000000000004), (1, 0.2), (2, 0.1)]}


def test_the_api_works_inside_a_running_event_loop(client: ephemerid.Client, code: Path) -> None:
    async def notebook_cell() -> JobState:
        job = client.submit(code=code, params={"lr": 0.3}, key="in-a-loop")  # no "loop running"
        record = await asyncio.to_thread(job.wait, 60)
        return record.state

    assert asyncio.run(notebook_cell()) is JobState.SUCCEEDED


def test_a_wait_that_runs_out_names_the_state_and_cancel_ends_the_job(
    client: ephemerid.Client, code: Path
) -> None:
    write_script(code, "import time\nprint('sleeping', flush=True)\ntime.sleep(120)\n", "slow.py")
    job = client.submit(code=code, entrypoint="slow.py", key="slow")
    wait_for(lambda: "sleeping" in "".join(job.logs()), "the slow job to start", 60)

    with pytest.raises(WaitTimedOut, match=f"job {job.id} is still RUNNING"):
        job.wait(timeout=0.5)
    job.cancel()

    assert job.wait(timeout=60).state is JobState.CANCELLED


def test_the_same_key_gives_the_same_job_and_jobs_lists_it(
    client: ephemerid.Client, code: Path, runs: list[ephemerid.Job]
) -> None:
    again = client.submit(code=code, params={"lr": 0.5}, key="lr-0.5")

    assert again.id == runs[0].id
    assert runs[0].id in [j.id for j in client.jobs(states=["succeeded"])]
    assert len(client.jobs(limit=1)) == 1


def test_compare_sorts_runs_by_a_metric_with_their_params_and_costs(
    client: ephemerid.Client, runs: list[ephemerid.Job]
) -> None:
    rows = client.compare(runs, by="loss")
    largest_first = client.compare([j.id for j in runs], by="loss", desc=True)

    assert [r["params"] for r in rows] == [{"lr": 0.1}, {"lr": 0.5}]
    assert [r["id"] for r in rows] == [runs[1].id, runs[0].id]
    assert [r["metrics"] for r in rows] == [{"loss": 0.1}, {"loss": 0.5}]
    assert all(r["state"] == "SUCCEEDED" and r["runtime_s"] >= 0 for r in rows)
    assert all(r["cost_usd"] == 0 or r["cost_usd"] is None for r in rows)
    assert [r["id"] for r in largest_first] == [runs[0].id, runs[1].id]


def eph(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([str(EPH), *args], capture_output=True, text=True, env=env, timeout=90)


def test_eph_runs_compare_prints_the_rows_as_json_and_as_a_table(
    client: ephemerid.Client, runs: list[ephemerid.Job]
) -> None:
    ids = [j.id for j in runs]
    as_json = eph("runs", "compare", *ids, "--by", "loss", "--json")
    shown = eph("runs", "compare", *ids, "--by", "loss")

    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == client.compare(ids, by="loss")
    rows = [line.split() for line in shown.stderr.splitlines()]
    assert [r[:4] for r in rows if r and r[0] in ids] == [
        [ids[1], "SUCCEEDED", "lr=0.1", "0.1"],
        [ids[0], "SUCCEEDED", "lr=0.5", "0.5"],
    ]


def test_compare_by_a_metric_no_run_has_names_the_metrics_they_have(
    client: ephemerid.Client, runs: list[ephemerid.Job]
) -> None:
    with pytest.raises(BadInput, match=r"'accuracy'.*the runs have loss"):
        client.compare(runs, by="accuracy")
    done = eph("runs", "compare", runs[0].id, "--by", "accuracy")
    assert done.returncode == 2 and "the runs have loss" in done.stderr


def test_an_unknown_job_or_no_jobs_is_refused_by_name(
    client: ephemerid.Client, runs: list[ephemerid.Job]
) -> None:
    with pytest.raises(NotFound, match="train-nosuchjob"):
        client.job("train-nosuchjob")
    with pytest.raises(NotFound, match="train-nosuchjob"):
        client.compare([runs[0].id, "train-nosuchjob"])
    with pytest.raises(BadInput, match="at least one job"):
        client.compare([])
    unknown, empty = eph("runs", "compare", "train-nosuchjob"), eph("runs", "compare")
    assert unknown.returncode != 0 and "train-nosuchjob" in unknown.stderr
    assert empty.returncode == 2 and "at least one job" in empty.stderr


def test_a_bad_spec_is_refused_before_anything_runs(client: ephemerid.Client, code: Path) -> None:
    before = len(client.jobs())
    with pytest.raises(SpecError, match="gpus"):
        client.submit(code=code, gpus=-1)
    with pytest.raises(SpecError, match="entrypoint"):
        client.submit(spec={"kind": "train", "code": str(code)})
    assert len(client.jobs()) == before


def test_import_ephemerid_loads_the_client_only_on_first_use() -> None:
    check = (
        "import sys, ephemerid; assert 'ephemerid.client' not in sys.modules; "
        "ephemerid.Client; assert 'ephemerid.client' in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
