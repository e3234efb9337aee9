"""`eph cost` as a user runs it: the table and the persistent machine on stderr, the report as
JSON on stdout, bad input with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drive import run, service_with, spec_for, write_script
from ephemerid.settings import Settings
from in_process import run_eph

T4 = "Standard_NC4as_T4_v3"


def env_of(settings: Settings) -> dict[str, str]:
    return {"EPHEMERID_HOME": str(settings.home), "COLUMNS": "300", "NO_COLOR": "1"}


def test_eph_cost_prints_spend_by_backend_and_the_persistent_machine_with_its_assumptions(
    settings: Settings, code_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_script(code_dir, "print('hi')\n")
    with service_with(settings, local_price_per_hour=36.0) as service:
        done = run(service, spec_for(code_dir))
    assert done.cost_usd is not None
    env = env_of(settings)
    args = ("cost", "--since", "1d", "--by", "backend", "--vs-persistent", T4)

    text = run_eph(args, env, tmp_path, monkeypatch)
    data = json.loads(run_eph((*args, "--json"), env, tmp_path, monkeypatch).stdout)

    assert text.returncode == 0 and text.stdout == ""  # people read stderr; scripts read --json
    assert f"one {T4} always on (on demand, $0.526/h x 24.0 h): $12.62" in text.stderr
    assert "assumes period:" in text.stderr and "assumes persistent:" in text.stderr
    [local] = data["groups"]
    assert local["key"] == "local" and local["jobs"] == 1
    assert local["cost_usd"] == pytest.approx(done.cost_usd, abs=1e-5)
    assert data["persistent"]["cost_usd"] == pytest.approx(24 * 0.526)
    assert data["persistent"]["saving_usd"] == pytest.approx(24 * 0.526 - local["cost_usd"])
    assert len(data["daily"]) == 2  # the last 24 h touch two UTC days


def test_a_local_job_without_a_price_is_shown_as_time_with_no_price_set(
    settings: Settings, code_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_script(code_dir, "print('hi')\n")
    with service_with(settings) as service:
        done = run(service, spec_for(code_dir))
    assert done.price_per_hour is None and done.cost_usd is None and done.held_s
    env = env_of(settings)

    data = json.loads(run_eph(("cost", "--json"), env, tmp_path, monkeypatch).stdout)
    text = run_eph(("cost",), env, tmp_path, monkeypatch)

    assert data["total"]["cost_usd"] == 0 and data["total"]["jobs"] == 1
    assert data["total"]["unpriced_h"] == pytest.approx(done.held_s / 3600, abs=1e-6)
    assert text.returncode == 0 and "no price set" in text.stderr
    assert any("unpriced" in line for line in data["assumptions"])


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--vs-persistent", "Standard_H100"), "not in the price table"),
        (("--since", "last week"), "--since: 'last week' is not a time"),
        (("--by", "gpu"), "--by: 'gpu' is not a grouping"),
        (("--since", "1h", "--until", "2h"), "is not before --until"),
    ],
)
def test_eph_cost_answers_bad_input_with_exit_2_and_json(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    said: str,
) -> None:
    with service_with(settings):
        pass  # a home with an empty store
    env = {"EPHEMERID_HOME": str(settings.home)}

    done = run_eph(("cost", *args, "--json"), env, tmp_path, monkeypatch)

    assert done.returncode == 2
    assert json.loads(done.stdout)["kind"] == "BadInput" and said in done.stderr
