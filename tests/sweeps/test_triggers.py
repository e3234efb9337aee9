"""A sweep comes from any trigger (a queue message, a dropped file's rule) and runs on any store
(Azure Table Storage through Azurite too): the same sweep once per event, whoever delivers it."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from drive import cleaned_up, upload
from ephemerid.app import build_service
from ephemerid.intake import Intake
from ephemerid.record import JobState
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.sweeps import validate_sweep
from sweeping import TRAIN, drive

SEARCH = {"method": "grid", "space": {"lr": [0.05, 0.1]}, "metric": "val_loss", "max_parallel": 2}


def code_uri(service: Service) -> str:
    upload(service.artifacts, "code/lin/train.py", TRAIN.encode())
    return service.uri("code/lin")


def test_a_queue_message_of_kind_sweep_runs_a_sweep_once(sweeps: Service, tmp_path: Path) -> None:
    intake = Intake(sweeps, Rules.parse("", base=tmp_path))
    body = json.dumps(
        {
            "kind": "sweep",
            "name": "from-queue",
            "trial": {"code": code_uri(sweeps), "entrypoint": "train.py"},
            "search": SEARCH,
        }
    ).encode()

    first = intake.message("queue", "m-1", body)
    again = intake.message("queue", "m-1", body)  # redelivered
    assert first is not None and again is not None and again.id == first.id
    sweep = drive(sweeps, first.id)

    assert sweep.state is JobState.SUCCEEDED
    assert sweep.owner == "queue"
    assert len(sweeps.sweep_trials(sweep.id)) == 2
    assert {t.owner for t in sweeps.sweep_trials(sweep.id)} == {"queue"}


def test_a_queue_sweep_with_code_on_the_host_is_refused_and_recorded(
    sweeps: Service, tmp_path: Path
) -> None:
    intake = Intake(sweeps, Rules.parse("", base=tmp_path))
    body = {"kind": "sweep", "trial": {"code": "/etc", "entrypoint": "t.py"}, "search": SEARCH}

    assert intake.message("queue", "m-2", json.dumps(body).encode()) is None
    assert sweeps.list() == []
    assert "artifact URI" in sweeps.rejections()[0].reason


def test_a_dropped_file_starts_the_sweep_its_rule_makes(
    sweeps: Service, train_code: Path, tmp_path: Path
) -> None:
    rules = Rules.parse(
        f"""
defaults:
  compute: {{max_runtime: 10m}}
rules:
  - name: tune-on-drop
    blob: incoming/tune/{{name}}.csv
    job:
      kind: sweep
      name: "tune-{{name}}"
      trial:
        code: {train_code}
        entrypoint: train.py
        inputs: {{data: "{{uri}}"}}
      search: {json.dumps(SEARCH)}
""",
        base=tmp_path,
    )
    intake = Intake(sweeps, rules)
    upload(sweeps.artifacts, "incoming/tune/week1.csv", b"x,y\n1,2\n")

    [submitted] = intake.blob("incoming/tune/week1.csv", None).submitted
    [again] = intake.blob("incoming/tune/week1.csv", None).submitted
    sweep = drive(sweeps, submitted.job.id)

    assert (again.created, again.job.id) == (False, sweep.id)
    assert sweep.state is JobState.SUCCEEDED
    trials = sweeps.sweep_trials(sweep.id)
    assert [t.spec.name for t in sorted(trials, key=lambda t: t.spec.name or "")] == [
        "tune-week1-0",
        "tune-week1-1",
    ]
    assert all(t.spec.compute.max_runtime == 600 for t in trials)  # the defaults, per trial
    assert all(t.spec.inputs["data"].endswith("incoming/tune/week1.csv") for t in trials)


def test_a_sweep_runs_on_azure_table_storage(
    settings: Settings, train_code: Path, azurite_connection: str
) -> None:
    table = Settings.from_env(
        {"EPHEMERID_STORAGE": azurite_connection},
        home=settings.home,
        store_url=f"table://sweeps{uuid.uuid4().hex[:12]}",
        local_slots=4,
        heartbeat_s=0.5,
    )
    data = {
        "kind": "sweep",
        "name": "on-table",
        "trial": {"code": str(train_code), "entrypoint": "train.py"},
        "search": {**SEARCH, "early_stop": "median"},
    }
    with cleaned_up(build_service(table)) as service:
        sweep = drive(service, service.submit(validate_sweep(data), key="table").job.id)
        trials = service.sweep_trials(sweep.id)

    assert sweep.state is JobState.SUCCEEDED
    assert len(trials) == 2
    assert sweep.sweep is not None and len(sweep.sweep["journal"]) > 4
