"""User code never sees the service's secrets, and what it prints of them is masked where stored.

The service the tests build has fake secrets in its environment, as a function app or a shell
running ``eph`` would: LocalCompute hands that environment to the runner, and the runner must
hand user code only its allow-list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from drive import log_of, run, service_with, spec_for, text_of, write_script
from ephemerid import names, procs
from ephemerid.errors import SpecError
from ephemerid.rank import Rank
from ephemerid.record import JobState
from ephemerid.runner import Runner
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.spec import validate_spec

ACCOUNT_KEY = "ZmFrZS1hY2NvdW50LWtleS1mb3ItdGhlLXRlc3Q="
SECRETS = {
    "EPHEMERID_STORAGE": (
        "DefaultEndpointsProtocol=http;AccountName=fakeaccount;"
        f"AccountKey={ACCOUNT_KEY};BlobEndpoint=http://127.0.0.1:1/fakeaccount"
    ),
    "EPHEMERID_SERVICEBUS": "Endpoint=sb://fake.servicebus.windows.net/;SharedAccessKeyName=r;"
    "SharedAccessKey=ZmFrZS1zZXJ2aWNlYnVzLWtleQ==",
    "AZURE_CLIENT_SECRET": "fake-client-secret-value-1234",
    "EPHEMERID_DEV_FUNCTION_KEY": "fake-dev-function-key-5678",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-fake-insights-key",
}

HOSTILE = """
import json, os, pathlib, sys, time

params = json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())
home = os.environ.get("EPHEMERID_HOME")
found = {}
for name in ("jobs.db", "devhost-keys.json"):
    try:
        found[name] = pathlib.Path(home, name).read_bytes().hex() if home else "no EPHEMERID_HOME"
    except OSError as exc:
        found[name] = f"cannot open: {exc}"
seen = {"env": dict(os.environ), "found": found, "cwd": os.getcwd()}
pathlib.Path(params["report"]).write_text(json.dumps(seen))  # outside the job: nothing masks it
print(json.dumps(seen["env"]))
print("the storage key is", params["key"])
print("the client secret is", params["secret"])
sys.stdout.write(params["secret"][:9])  # one secret in two writes, to mask it whole
sys.stdout.flush()
time.sleep(0.3)  # most likely a read of its own: the pump must not mask each read alone
sys.stdout.write(params["secret"][9:] + " was split\\n")
sys.exit(3)
"""


@pytest.fixture
def secret_service(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("EPHEMERID_HOME", str(settings.home))
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "devhost-keys.json").write_text('{"key": "fake"}')
    with service_with(settings) as service:
        yield service


def _hostile_job(service: Service, code_dir: Path, tmp_path: Path) -> tuple[dict, str]:
    write_script(code_dir, HOSTILE)
    report = tmp_path / "seen.json"
    params = {"report": str(report), "key": ACCOUNT_KEY, "secret": SECRETS["AZURE_CLIENT_SECRET"]}
    job = run(service, spec_for(code_dir, params=params))
    assert job.state is JobState.FAILED, job.reason
    return json.loads(report.read_text()), job.id


def test_user_code_sees_no_secret_of_the_service_and_no_home(
    secret_service: Service, code_dir: Path, tmp_path: Path
) -> None:
    seen, _ = _hostile_job(secret_service, code_dir, tmp_path)

    dumped = json.dumps(seen["env"])
    for name, value in SECRETS.items():
        assert name not in seen["env"]
        assert value not in dumped
    assert ACCOUNT_KEY not in dumped
    assert "EPHEMERID_HOME" not in seen["env"]
    assert set(seen["found"].values()) == {"no EPHEMERID_HOME"}
    assert {k for k in seen["env"] if k.startswith("EPHEMERID_")} == {
        procs.ENV_MARK,  # local compute: the work folder, by which teardown finds the job
        names.ENV_JOB_ID,
        names.ENV_INPUT_DIR,
        names.ENV_OUTPUT_DIR,
        names.ENV_CHECKPOINT_DIR,
        names.ENV_MODEL_DIR,
        names.ENV_PARAMS,
        names.ENV_METRICS,
    }
    scratch = Path(seen["env"][names.ENV_OUTPUT_DIR]).parent
    assert Path(seen["env"]["HOME"]).parent == scratch
    assert Path(seen["env"]["TMPDIR"]).parent == scratch
    assert Path(seen["cwd"]) == scratch / "code"


def test_secrets_the_job_prints_are_masked_in_the_log_the_result_and_the_reason(
    secret_service: Service, code_dir: Path, tmp_path: Path
) -> None:
    _, job_id = _hostile_job(secret_service, code_dir, tmp_path)

    stored = {
        "output.log": log_of(secret_service, job_id),
        "result.json": text_of(secret_service.artifacts, names.run_key(job_id, names.RESULT_FILE)),
        "reason": secret_service.get(job_id).to_json()["reason"],  # the params hold them too
    }
    for where, text in stored.items():
        assert "the storage key is ***" in text, where
        for value in [*SECRETS.values(), ACCOUNT_KEY]:
            assert value not in text, f"{value} in {where}"
    assert "the client secret is ***" in stored["output.log"]
    assert "*** was split" in stored["output.log"]
    assert "*** was split" in stored["reason"]


def test_a_reason_the_service_records_is_masked(
    secret_service: Service, code_dir: Path, tmp_path: Path
) -> None:
    write_script(code_dir, "import time; time.sleep(60)\n")
    job = secret_service.submit(spec_for(code_dir)).job

    ended = secret_service.end(
        job.id, JobState.FAILED, f"provisioning failed: {SECRETS['EPHEMERID_STORAGE']} refused"
    )

    assert ended.reason == "provisioning failed: *** refused"
    assert SECRETS["EPHEMERID_STORAGE"] not in json.dumps(secret_service.get(job.id).to_json())


def test_the_spec_env_reaches_the_script(service: Service, code_dir: Path) -> None:
    script = """
        import json, os, pathlib
        out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
        (out / "env.json").write_text(json.dumps(dict(os.environ)))
    """
    write_script(code_dir, script)
    env = {"WANDB_MODE": "offline", "MY_FLAG": "on; $(id) `x`"}

    job = run(service, spec_for(code_dir, env=env))

    assert job.state is JobState.SUCCEEDED, job.reason
    seen = json.loads(text_of(service.artifacts, f"runs/{job.id}/outputs/env.json"))
    assert {k: seen[k] for k in env} == env


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"1BAD": "x"}, "'1BAD' is not a variable name"),
        ({"MY-VAR": "x"}, "'MY-VAR' is not a variable name"),
        ({"EPHEMERID_HOME": "/tmp"}, "'EPHEMERID_HOME' is reserved"),
        ({names.ENV_OUTPUT_DIR: "/tmp"}, f"'{names.ENV_OUTPUT_DIR}' is reserved"),
        ({"HOME": "/root"}, "'HOME' is reserved"),
        ({"RANK": "3"}, "'RANK' is reserved"),
        ({"FLAG": 1}, "env.FLAG must be a string"),
        ({"NUL": "a\x00b"}, "env.NUL"),
        ({"BIG": "x" * 40000}, "env.BIG"),
        ({f"V{n}": "x" for n in range(200)}, "200 variables"),
    ],
)
def test_a_bad_env_is_refused_at_submit_naming_the_field(
    env: dict[str, object], said: str, service: Service, code_dir: Path
) -> None:
    write_script(code_dir, "print('never runs')\n")
    data = {"kind": "train", "code": str(code_dir), "entrypoint": "job.py", "env": env}

    with pytest.raises(SpecError) as refused:
        service.submit(validate_spec(data))

    assert said in str(refused.value)
    assert "env" in str(refused.value)
    assert service.list() == []


RANKED = """
import json, os, pathlib
out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
(out / "dist.json").write_text(json.dumps(dict(os.environ)))
"""


def test_a_ranks_entrypoint_gets_the_launchers_variables_and_not_the_runners_secrets(
    service: Service, code_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_script(code_dir, RANKED)
    job = run(service, spec_for(code_dir))
    launcher = {
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "10.0.0.4",
        "MASTER_PORT": "29500",
        "NCCL_DEBUG": "INFO",
    }
    for name, value in {**launcher, **SECRETS}.items():
        monkeypatch.setenv(name, value)

    outcome = Runner(service.artifacts, job.id, tmp_path / "node", rank=Rank(1, 2)).run()

    assert outcome.status == "succeeded", outcome.reason
    seen = json.loads((tmp_path / "node" / "rank-1" / "output" / "dist.json").read_text())
    assert {k: seen.get(k) for k in launcher} == launcher
    assert not SECRETS.keys() & seen.keys()
