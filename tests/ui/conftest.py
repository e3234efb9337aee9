"""One home per test module, with jobs of two owners, a sweep, a model and refusals in it, made
by the real service on local compute; and the dashboard served over it on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from drive import cleaned_up, run, spec_for, write_script
from ephemerid.app import build_service
from ephemerid.errors import BadInput
from ephemerid.functions.callers import Caller
from ephemerid.record import JobRecord, JobState
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.sweeps import validate_sweep
from ephemerid.ui.app import dashboard
from ephemerid.ui.auth import CallerGate, TokenGate
from sweeping import TRAIN, drive, sweep_data
from ui.web import Web, serving

ALICE = Caller("key:alice")
BOB = Caller("key:bob")
ADMIN = Caller("cli:tester", admin=True)
TOKEN = "test-token-0123456789"

# a small train job: three steps of a falling loss, an output file and a model
TRAIN_TINY = """
import json, os, pathlib
from ephemerid import track

params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
for step in range(3):
    track.log_metric("loss", 1.0 / (step + 1), step=step)
    print(f"step {step}: loss {1.0 / (step + 1):.3f}", flush=True)
out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
(out / "report.txt").write_text("tiny report\\n")
(out / "model").mkdir()
(out / "model" / "weights.json").write_text(json.dumps({"w": 1}))
if params.get("fail"):
    raise SystemExit("this job fails on purpose")
"""


@dataclass(frozen=True)
class Home:
    service: Service
    alice_job: JobRecord
    bob_job: JobRecord
    sweep: JobRecord
    code: Path


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    root = tmp_path_factory.mktemp("ui")
    settings = Settings.from_env(
        {}, home=root / "home", rules_path=root / "ephemerid.yaml", heartbeat_s=0.5, grace_s=2.0
    )
    code = root / "code"
    code.mkdir()
    write_script(code, TRAIN_TINY, "tiny.py")
    write_script(code, TRAIN, "train.py")
    with cleaned_up(build_service(settings)) as service:
        alice = run(
            service,
            spec_for(
                code,
                "tiny.py",
                params={"lr": 0.1, "note": "<script>alert('x')</script>"},
                register_as={"name": "tiny"},
            ),
            owner=ALICE.name,
        )
        again = spec_for(code, "tiny.py", params={"lr": 0.05}, register_as={"name": "tiny"})
        run(service, again, owner=ALICE.name)  # tiny:2
        service.models.promote("tiny", 1, "production")
        bob = run(service, spec_for(code, "tiny.py", params={"fail": 1}), owner=BOB.name)
        space = {"lr": [0.02, 0.05, 0.1, 0.3]}
        search = {"method": "grid", "space": space, "metric": "val_loss", "max_parallel": 2}
        submitted = service.submit(
            validate_sweep(sweep_data(code, search)), key="ui-sweep", owner=ALICE.name
        )
        sweep = drive(service, submitted.job.id)
        for who in (ALICE, BOB):
            service.reject(
                "http", f"bad-{who.name}", BadInput(f"refused for {who.name}"), b"{}", who.name
            )
        assert alice.state is JobState.SUCCEEDED and bob.state is JobState.FAILED
        yield Home(service, alice, bob, sweep, code)


@pytest.fixture(scope="module")
def admin_url(home: Home) -> Iterator[str]:
    with serving(dashboard(home.service, TokenGate(TOKEN, ADMIN))) as url:
        yield url


@pytest.fixture(scope="module")
def alice_url(home: Home) -> Iterator[str]:
    with serving(dashboard(home.service, CallerGate(ALICE, keep=()))) as url:
        yield url


@pytest.fixture
def web(admin_url: str) -> Web:
    """A client that has entered with the token (it holds the cookie)."""
    client = Web(admin_url)
    assert client.get(f"/jobs?token={TOKEN}").status == 200
    return client
