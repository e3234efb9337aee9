"""The service: one job per idempotency key, bad input refused for free, and every transition."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from drive import (
    Gate,
    alive,
    finish,
    held_spec,
    log_of,
    run,
    service_with,
    spec_for,
    upload,
    wait_for,
    wait_gone,
    write_script,
)
from ephemerid import names
from ephemerid.artifacts import get_bytes, put_bytes
from ephemerid.contract import Launch
from ephemerid.errors import BadInput, SpecError, UnsafeName
from ephemerid.intake import on_blob_created
from ephemerid.record import ComputeState, JobState
from ephemerid.rules import Rules
from ephemerid.service import Service, Submitted
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec

MODEL_SCRIPT = """
import os, pathlib
model = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"]) / "model"
model.mkdir()
(model / "weights.txt").write_text("0.1 0.2 0.3")
"""


def rules_for(code_dir: Path, entrypoint: str, params: dict[str, Any]) -> Rules:
    text = f"""
rules:
  - name: train-on-upload
    blob: incoming/train/{{name}}.csv
    job:
      kind: train
      code: {code_dir}
      entrypoint: {entrypoint}
      inputs: {{data: "{{uri}}"}}
      params: {json.dumps(params)}
"""
    return Rules.parse(text, base=code_dir)


def nothing_was_rented(service: Service) -> bool:
    return (
        service.store.list() == []
        and service.backends["local"].list_owned() == []
        and list(service.artifacts.list(f"{names.RUNS}/")) == []
    )


# -- idempotency --------------------------------------------------------------------------


def test_the_same_key_twice_makes_one_job_and_starts_it_once(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    spec = held_spec(code_dir, gate)

    first = service.submit(spec, key="upload-42")
    gate.pid()
    again = service.submit(spec, key="upload-42")

    assert first.created is True
    assert again.created is False
    assert again.job.id == first.job.id
    assert len(service.store.list()) == 1
    assert len(service.backends["local"].list_owned()) == 1
    gate.open()
    done = finish(service, first.job.id)
    after = service.submit(spec, key="upload-42")
    assert after.created is False
    assert after.job.state is JobState.SUCCEEDED
    assert gate.starts() == 1
    assert log_of(service, done.id).count("staging code and inputs") == 1


def test_an_idempotency_key_in_the_spec_wins_over_the_callers(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print('ok')\n")
    spec = spec_for(code_dir, idempotency_key="nightly-2024-05-01")

    first = service.submit(spec, key="one delivery")
    second = service.submit(spec, key="another delivery")

    assert second.created is False
    assert second.job.id == first.job.id
    assert first.job.key == "nightly-2024-05-01"
    finish(service, first.job.id)


def test_submits_without_a_key_are_different_jobs(service: Service, code_dir: Path) -> None:
    write_script(code_dir, "print('ok')\n")

    jobs = [service.submit(spec_for(code_dir)).job for _ in range(2)]

    assert jobs[0].id != jobs[1].id
    assert [finish(service, j.id).state for j in jobs] == [JobState.SUCCEEDED] * 2


def test_a_redelivery_is_answered_from_the_store_even_after_its_code_folder_is_gone(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print('ok')\n")
    spec = spec_for(code_dir)
    first = service.submit(spec, key="upload-7")
    finish(service, first.job.id)
    (code_dir / "job.py").unlink()

    again = service.submit(spec, key="upload-7")

    assert again.created is False and again.job.id == first.job.id
    with pytest.raises(SpecError, match=r"entrypoint 'job\.py' is not a file"):
        service.submit(spec, key="upload-8")


def test_jobs_with_the_same_code_share_one_snapshot_and_changed_code_gets_its_own(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print('version 1')\n")
    (code_dir / "lib").mkdir()
    (code_dir / "lib" / "util.py").write_text("X = 1\n")
    one, two = (service.submit(spec_for(code_dir)).job for _ in range(2))
    write_script(code_dir, "print('version 2')\n")
    three = service.submit(spec_for(code_dir)).job

    done = [finish(service, job.id) for job in (one, two, three)]

    code = [launch_of(service, job.id).code for job in (one, two, three)]
    assert code[0] == code[1] != code[2]
    assert all(c.startswith(f"{names.RUNS}/{names.CODE_SNAPSHOTS}/") for c in code)
    files = sorted(s.key for s in service.artifacts.list(f"{names.RUNS}/{names.CODE_SNAPSHOTS}/"))
    snapshot = ["{}.json", "{}/job.py", "{}/lib/util.py"]
    assert files == sorted(f.format(c) for c in (code[0], code[2]) for f in snapshot)
    assert [log_of(service, job.id).count("version 1") for job in done] == [1, 1, 0]
    assert "version 2" in log_of(service, three.id)


def launch_of(service: Service, job_id: str) -> Launch:
    return Launch.loads(get_bytes(service.artifacts, names.run_key(job_id, names.JOB_FILE)))


def test_eight_threads_delivering_one_blob_event_800_times_make_one_job_and_one_runner(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    spec = held_spec(code_dir, gate)
    rules = rules_for(code_dir, spec.entrypoint, spec.params)
    stat = service.artifacts.stat(
        service.artifacts.key_of(upload(service.artifacts, "incoming/train/day1.csv", b"x\n1\n"))
    )
    assert stat is not None
    start = threading.Barrier(8)

    def deliver(_: int) -> list[Submitted]:
        start.wait()
        return [
            s
            for _ in range(100)
            for s in on_blob_created(service, rules, stat.key, stat.etag).submitted
        ]

    with ThreadPoolExecutor(8) as pool:
        submitted = [s for batch in pool.map(deliver, range(8)) for s in batch]

    assert len(submitted) == 800
    assert sum(s.created for s in submitted) == 1
    assert len({s.job.id for s in submitted}) == 1
    assert len(service.store.list()) == 1
    job_dirs = list((service.settings.home / "compute" / "jobs").iterdir())
    assert [d.name for d in job_dirs] == [submitted[0].job.id]
    gate.open()
    done = finish(service, submitted[0].job.id)
    assert done.state is JobState.SUCCEEDED
    assert gate.starts() == 1
    assert log_of(service, done.id).count("staging code and inputs") == 1


# -- bad input costs nothing --------------------------------------------------------------


BAD_SPECS: dict[str, tuple[Callable[[Service, Path], dict[str, Any]], str]] = {
    "unknown backend": (
        lambda s, code: {"compute": {"backend": "nimbus"}},
        "compute backend 'nimbus' is unknown",
    ),
    "model that does not exist": (
        lambda s, code: {"kind": "predict", "model": "churn@production"},
        "model: model 'churn' has no versions",
    ),
    "missing code dir": (
        lambda s, code: {"code": str(code / "nowhere")},
        "is not a directory",
    ),
    "entrypoint not in code": (
        lambda s, code: {"entrypoint": "train.py"},
        "entrypoint 'train.py' is not a file",
    ),
    "input URI outside the bucket": (
        lambda s, code: {"inputs": {"data": "file:///etc/passwd"}},
        "inputs.data: 'file:///etc/passwd' is not in this artifact store",
    ),
    "input key escaping its prefix": (
        lambda s, code: {"inputs": {"data": "incoming/../../etc/passwd"}},
        "inputs.data: .* '..' segments",
    ),
    "input that does not exist": (
        lambda s, code: {"inputs": {"data": s.artifacts.uri("incoming/train/none.csv")}},
        "inputs.data: .*none.csv' does not exist",
    ),
    "code from a URI outside the bucket": (
        lambda s, code: {"code": "file:///etc"},
        "code: 'file:///etc' is not in this artifact store",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_is_refused_and_nothing_is_stored_or_provisioned(
    service: Service, code_dir: Path, case: str
) -> None:
    write_script(code_dir, "print('never runs')\n")
    make_fields, message = BAD_SPECS[case]
    fields = {"kind": "train", "code": str(code_dir), "entrypoint": "job.py"}
    spec = JobSpec.model_validate({**fields, **make_fields(service, code_dir)})

    with pytest.raises(BadInput, match=message):
        service.submit(spec, key="bad")

    assert nothing_was_rented(service)


def test_a_model_reference_to_a_missing_model_is_a_spec_error_naming_it(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print('never runs')\n")
    spec = spec_for(code_dir, kind="predict", model="churn:3")

    with pytest.raises(SpecError, match="model 'churn'"):
        service.submit(spec)

    assert nothing_was_rented(service)


def test_code_bigger_than_the_limit_is_refused(settings: Settings, code_dir: Path) -> None:
    write_script(code_dir, "print('never runs')\n")
    (code_dir / "data.csv").write_bytes(b"x" * 5000)

    with service_with(settings, code_limit_bytes=4096) as service:
        with pytest.raises(SpecError, match="more than the 4096-byte limit"):
            service.submit(spec_for(code_dir))
        assert nothing_was_rented(service)


@pytest.mark.parametrize(
    "key",
    [
        "incoming/train/../../runs/x/job.json",
        "incoming/train/./a.csv",
        "/etc/passwd",
        "incoming\\train\\a.csv",
        "incoming/train/a\n.csv",
        "incoming//train/a.csv",
    ],
)
def test_a_blob_event_whose_name_escapes_its_prefix_is_refused(
    service: Service, code_dir: Path, key: str
) -> None:
    write_script(code_dir, "print('never runs')\n")
    rules = Rules.parse(
        f"rules:\n  - name: any\n    blob: incoming/{{rest}}\n    job: "
        f"{{kind: train, code: '{code_dir}', entrypoint: job.py}}\n",
        base=code_dir,
    )

    with pytest.raises(UnsafeName, match="is refused"):
        on_blob_created(service, rules, key, "etag-1")

    assert nothing_was_rented(service)


# -- capacity -----------------------------------------------------------------------------


def test_with_one_slot_a_second_job_waits_and_says_why_then_runs(
    settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    with service_with(settings, local_slots=1) as service:
        first = service.submit(held_spec(code_dir, gate)).job
        write_script(code_dir, "print('second job ran')\n")
        second = service.submit(spec_for(code_dir)).job

        assert first.state is JobState.RUNNING
        assert second.state is JobState.WAITING_FOR_CAPACITY
        assert "slots are busy" in second.reason
        assert second.compute_state is ComputeState.NONE
        assert service.dispatch_waiting()[0].state is JobState.WAITING_FOR_CAPACITY

        gate.open()
        first = finish(service, first.id)
        second = finish(service, second.id)

        assert first.state is JobState.SUCCEEDED
        assert second.state is JobState.SUCCEEDED
        assert second.reason == ""
        assert "second job ran" in log_of(service, second.id)
        assert second.started_at is not None and first.finished_at is not None
        assert second.started_at >= first.finished_at


# -- cancel -------------------------------------------------------------------------------


def test_cancelling_a_running_job_stops_it_and_gives_its_compute_back(
    service: Service, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job = service.submit(held_spec(code_dir, gate)).job
    script = gate.pid()

    cancelled = service.cancel(job.id)

    assert cancelled.state is JobState.CANCELLED
    assert cancelled.reason == "cancelled by user"
    assert cancelled.compute_state is ComputeState.RELEASED
    assert cancelled.held_s is not None
    wait_gone([job.handle["pid"], script])
    assert service.backends["local"].list_owned() == []
    assert service.store.get(job.id) == cancelled


def test_cancelling_a_finished_job_changes_nothing(service: Service, code_dir: Path) -> None:
    write_script(code_dir, "print('done')\n")
    job = run(service, spec_for(code_dir))

    assert service.cancel(job.id) == job
    assert service.store.get(job.id) == job


def test_a_job_cancelled_while_waiting_is_never_started(
    settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    with service_with(settings, local_slots=1) as service:
        first = service.submit(held_spec(code_dir, gate)).job
        waiting = service.submit(held_spec(code_dir, gate), key="second").job

        cancelled = service.cancel(waiting.id)
        gate.open()
        finish(service, first.id)

        assert cancelled.state is JobState.CANCELLED
        assert service.store.get(waiting.id).compute_state is ComputeState.NONE
        assert gate.starts() == 1


# -- completion ---------------------------------------------------------------------------


def test_a_result_for_an_unknown_job_is_ignored(service: Service) -> None:
    key = names.run_key("train-000000000000", names.RESULT_FILE)
    put_bytes(service.artifacts, key, json.dumps({"status": "succeeded"}).encode())

    delivery = on_blob_created(service, Rules.parse("", base=Path()), key, "etag-1")

    assert delivery.completed is None
    assert delivery.submitted == []
    assert service.store.list() == []


def test_completing_a_job_twice_registers_its_model_once(service: Service, code_dir: Path) -> None:
    write_script(code_dir, MODEL_SCRIPT)
    spec = spec_for(code_dir, register_as={"name": "churn", "alias": "production"})
    job = run(service, spec)
    rules = Rules.parse("", base=code_dir)
    result = service.artifacts.stat(names.run_key(job.id, names.RESULT_FILE))
    assert result is not None

    again = service.complete(job.id)
    redelivered = on_blob_created(service, rules, result.key, result.etag).completed

    assert job.state is JobState.SUCCEEDED
    assert job.model_version == "churn:1"
    assert again == job
    assert redelivered == job
    assert [v.version for v in service.models.versions("churn")] == [1]
    assert service.models.aliases("churn") == {"production": 1}


def test_concurrent_completions_register_each_jobs_model_once(
    service: Service, code_dir: Path
) -> None:
    """The completion event and the reaper (or two redeliveries) may handle one result at once."""
    write_script(code_dir, MODEL_SCRIPT)
    refs = []
    for round_ in range(3):
        job = service.submit(spec_for(code_dir, register_as={"name": "churn"})).job
        result = names.run_key(job.id, names.RESULT_FILE)
        wait_for(lambda: service.artifacts.stat(result), f"round {round_}'s result")  # noqa: B023
        start = threading.Barrier(8)

        def complete(_: int, job_id: str = job.id) -> str:
            start.wait()  # noqa: B023
            return service.complete(job_id).model_version

        with ThreadPoolExecutor(8) as pool:
            seen = set(pool.map(complete, range(8)))
        assert len(seen) == 1, seen
        refs.extend(seen)

    assert refs == ["churn:1", "churn:2", "churn:3"]
    assert [v.version for v in service.models.versions("churn")] == [1, 2, 3]


def test_a_job_that_finished_releases_compute_and_records_timings(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print('ok')\n")

    job = run(service, spec_for(code_dir))

    assert job.compute_state is ComputeState.RELEASED
    assert job.compute_requested_at and job.live_at and job.started_at
    assert job.finished_at and job.released_at
    assert job.compute_requested_at <= job.live_at <= job.started_at
    assert job.started_at <= job.finished_at <= job.released_at
    assert job.held_s is not None and job.runtime_s is not None
    assert job.held_s >= job.runtime_s
    assert not alive(job.handle["pid"])


def test_subscribers_hear_every_change_of_a_job_until_they_unsubscribe(
    service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print('hi')\n")
    heard: list[tuple[str, JobState, ComputeState]] = []
    unsubscribe = service.subscribe(
        lambda job: heard.append((job.id, job.state, job.compute_state))
    )
    service.subscribe(lambda job: 1 / 0)  # a failing listener is logged, never fatal

    job = run(service, spec_for(code_dir))

    states = [(state, compute) for job_id, state, compute in heard if job_id == job.id]
    assert states[0] == (JobState.ACCEPTED, ComputeState.NONE)
    assert (JobState.RUNNING, ComputeState.LIVE) in states
    assert states[-1] == (JobState.SUCCEEDED, ComputeState.RELEASED)
    unsubscribe()
    count = len(heard)
    run(service, spec_for(code_dir))
    assert len(heard) == count
