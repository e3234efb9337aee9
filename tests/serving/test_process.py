"""The service as its own process: `eph serve` and `python -m ephemerid.serving` start, answer,
and exit once idle with no worker left; the model's worker sees none of the service's keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

from serving.serving import KEY, KEYS, NAME, Registry, rows

START_S = 120.0


def _ready_line(proc: subprocess.Popen[str]) -> dict:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the service prints it once its model is loaded
    assert line, f"the service ended before it was ready: {_rest(proc.stderr)}"
    return json.loads(line)


def _rest(stream: IO[str] | None) -> str:
    return stream.read() if stream is not None else ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def _serve(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """The service's process; killed on the way out if it is still running."""
    with subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    ) as proc:
        try:
            yield proc
        finally:
            proc.kill()


def test_eph_serve_answers_with_the_dev_hosts_key_then_exits_when_idle_leaving_no_worker(
    registry: Registry,
) -> None:
    registry.publish(2.0, alias="production")
    home = registry.settings.home
    env = {"EPHEMERID_HOME": str(home), "EPHEMERID_SERVING_KEYS": ""}
    command = ["-m", "ephemerid.cli", "serve", f"{NAME}@production", "--code", str(registry.code)]
    with _serve([*command, "--port", "0", "--idle-exit", "2", "--json"], env) as proc:
        ready = _ready_line(proc)
        key = json.loads((home / "devhost-keys.json").read_text())["functionKeys"]["default"]
        answer = httpx.post(
            f"{ready['url']}/v1/models/{NAME}:predict",
            json={"rows": rows(4)},
            headers={"x-ephemerid-key": key},
            timeout=60,
        )
        (version,) = ready["versions"]
        code = proc.wait(timeout=START_S)
        errors = _rest(proc.stderr)

    assert answer.status_code == 200 and answer.json()["rows"] == [{"id": 4, "y": 8.0}]
    assert code == 0, errors
    assert not _alive(version["pid"])


def test_the_module_entry_point_serves_from_its_settings_alone(registry: Registry) -> None:
    registry.publish(3.0, alias="production")
    env = {
        "EPHEMERID_HOME": str(registry.settings.home),
        "EPHEMERID_SERVING_MODEL": f"{NAME}@production",
        "EPHEMERID_SERVING_KEYS": KEYS,
        "EPHEMERID_SERVING_PORT": "0",
        "EPHEMERID_SERVING_CODE": str(registry.code),
        "EPHEMERID_SERVING_IDLE_EXIT_S": "1",
    }
    with _serve(["-m", "ephemerid.serving"], env) as proc:
        ready = _ready_line(proc)
        answer = httpx.post(
            f"{ready['url']}/v1/models/{NAME}:predict",
            json={"rows": rows(2)},
            headers={"x-ephemerid-key": KEY},
            timeout=60,
        )
        code = proc.wait(timeout=START_S)
        errors = _rest(proc.stderr)

    assert answer.json()["rows"] == [{"id": 2, "y": 6.0}]
    assert code == 0, errors


def test_the_module_entry_point_refuses_bad_settings_naming_them(tmp_path: Path) -> None:
    env = {
        "EPHEMERID_HOME": str(tmp_path / "home"),
        "EPHEMERID_SERVING_MODEL": "scaler",
        "EPHEMERID_SERVING_PORT": "eighty",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ephemerid.serving"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=START_S,
    )

    assert done.returncode == 2
    assert "EPHEMERID_SERVING_MODEL='scaler'" in done.stderr
    assert "EPHEMERID_SERVING_PORT='eighty'" in done.stderr
    assert "Traceback" not in done.stderr


ENV_MODEL = textwrap.dedent(
    """
    import os

    def load(model_dir):
        return None

    def predict(model, batch):
        seen = ",".join(sorted(k for k in os.environ if "EPHEMERID" in k or "STORAGE" in k))
        return {"seen": [seen] * batch.num_rows}
    """
)


def test_the_models_worker_sees_none_of_the_services_keys(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = tmp_path / "env-model"
    code.mkdir()
    (code / "predict.py").write_text(ENV_MODEL)
    registry.publish(1.0, alias="production")
    monkeypatch.setenv("EPHEMERID_SERVING_KEYS", KEYS)
    monkeypatch.setenv("EPHEMERID_STORAGE", "AccountName=a;AccountKey=c2VjcmV0c2VjcmV0")
    with registry.serve(code=code) as client:
        answer = client.predict([{"anything": 1}])

    assert answer.status_code == 200
    assert answer.json()["rows"] == [{"seen": "EPHEMERID_MODEL_DIR"}]
