"""The dashboard in a real browser (headless Chromium through Playwright): the pages load with no
console errors, a running job's log and metric curve move without a reload, a cancel and a
promote from the page take effect, and a scoped page shows no other owner's jobs. The same run
writes the screenshots in docs/img/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drive import Gate, held_spec, spec_for, wait_for, write_script
from ephemerid.record import JobState
from ephemerid.ui.app import dashboard
from ephemerid.ui.auth import TokenGate
from ui.browser import WAIT_MS, Console, browser
from ui.conftest import ADMIN, ALICE, TOKEN, Home
from ui.priced import PricedHome, priced_home
from ui.web import serving

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"

# a job that logs a metric only when the test opens the gate for that step
STEPPED = """
import json, os, pathlib, time
from ephemerid import track

gate = pathlib.Path(json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())["gate"])
for step in range(1, 4):
    print(f"waiting for step {step}", flush=True)
    deadline = time.monotonic() + 150
    while not (gate / f"step-{step}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    track.log_metric("loss", 1.0 / step, step=step)
    print(f"step {step} done: loss {1.0 / step:.3f}", flush=True)
deadline = time.monotonic() + 150
while not (gate / "end").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
"""


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with browser(tmp_path_factory.mktemp("chromium-profile")) as ctx:
        yield ctx


@pytest.fixture(scope="module")
def priced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PricedHome]:
    with priced_home(tmp_path_factory.mktemp("priced")) as found:
        yield found


@pytest.fixture
def console() -> Iterator[Console]:
    seen = Console()
    yield seen
    assert seen.errors == []


def entered(context: Any, console: Console, url: str) -> Any:
    page = console.watch(context.new_page())
    page.goto(f"{url}/jobs?token={TOKEN}")
    return page


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_the_pages_load_with_no_console_errors(
    context: Any, console: Console, admin_url: str, home: Home
) -> None:
    page = entered(context, console, admin_url)
    assert page.locator(f'tr[data-job="{home.alice_job.id}"]').count() == 1
    shot(page, "jobs")
    for path in ("/sweeps", "/rejected", f"/jobs/{home.alice_job.id}", "/compute"):
        page.goto(f"{admin_url}{path}")
        page.wait_for_load_state("load")
    page.goto(f"{admin_url}/jobs/{home.alice_job.id}")
    page.wait_for_selector('[data-metric="loss"] canvas')  # the finished job's curve is drawn
    page.goto(f"{admin_url}/sweeps/{home.sweep.id}?sort=value")
    page.wait_for_selector("[data-chart=line] canvas")
    page.wait_for_selector("[data-chart=scatter] canvas")
    shot(page, "sweep")
    page.goto(f"{admin_url}/models")
    shot(page, "models")
    page.close()


def test_a_running_job_s_log_and_curve_move_without_a_reload(
    context: Any, console: Console, admin_url: str, home: Home, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(home.code, STEPPED, "stepped.py")
    spec = spec_for(home.code, "stepped.py", params=gate.params, name="stepped")
    job = home.service.submit(spec, owner=ALICE.name).job
    page = entered(context, console, admin_url)
    page.goto(f"{admin_url}/jobs/{job.id}")
    page.evaluate("window.loadedOnce = 'this page'")
    log = page.locator("#log")
    try:
        for step in (1, 2, 3):
            (gate.path / f"step-{step}").touch()
            log.filter(has_text=f"step {step} done").wait_for()
            page.wait_for_function(
                "n => document.querySelector('[data-metric=loss]')?.dataset.points === n",
                arg=str(step),
                timeout=WAIT_MS,
            )
        assert page.evaluate("window.loadedOnce") == "this page"  # never reloaded
        assert page.locator("#state").inner_text() == "RUNNING"
        assert page.locator('[data-metric="loss"] canvas').count() >= 1
        shot(page, "job")
        page.goto(f"{admin_url}/compute")
        assert page.locator(f'a[href="/jobs/{job.id}"]').count() == 1
        shot(page, "compute")
        page.goto(f"{admin_url}/jobs")
        page.evaluate("window.loadedOnce = 'the jobs page'")
        row = page.locator(f'tr[data-job="{job.id}"] td.state')
        assert row.inner_text() == "RUNNING"
    finally:
        (gate.path / "end").touch()
    wait_for(lambda: home.service.has_result(job.id), f"{job.id}'s result", 90)
    home.service.complete(job.id)  # what the agent does when the result lands

    page.locator(f'tr[data-job="{job.id}"] td.state', has_text="SUCCEEDED").wait_for()
    assert page.evaluate("window.loadedOnce") == "the jobs page"  # the table moved in place
    page.close()


def test_the_console_watch_sees_a_page_error(context: Any) -> None:
    seen = Console()
    page = seen.watch(context.new_page())
    page.set_content("<script>console.error('broken'); undefinedFunction();</script>")

    # each call into the page lets Playwright deliver the events it has received
    wait_for(lambda: page.evaluate("1") and len(seen.errors) == 2, "both errors", 60)
    assert seen.errors[0] == "broken" and "undefinedFunction" in seen.errors[1]
    page.close()


def test_a_cancel_from_the_page_asks_first_then_stops_the_job(
    context: Any, console: Console, admin_url: str, home: Home, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    job = home.service.submit(held_spec(home.code, gate), owner=ALICE.name).job
    gate.pid()
    page = entered(context, console, admin_url)
    page.goto(f"{admin_url}/jobs/{job.id}")

    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#cancel")
    assert home.service.get(job.id).state is JobState.RUNNING  # "no" changed nothing
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")

    page.locator("#state", has_text="CANCELLED").wait_for()
    assert home.service.get(job.id).state is JobState.CANCELLED
    page.close()


def test_a_promote_from_the_page_moves_the_alias(
    context: Any, console: Console, admin_url: str, home: Home
) -> None:
    page = entered(context, console, admin_url)
    page.goto(f"{admin_url}/models")
    row = page.locator('#model-tiny tr[data-version="1"]')
    row.locator('input[name="alias"]').fill("canary")
    page.once("dialog", lambda dialog: dialog.accept())
    row.locator("button.promote").click()

    page.locator("#promoted").wait_for()
    assert "tiny@canary -> version 1" in page.locator("#promoted").inner_text()
    assert home.service.models.aliases("tiny")["canary"] == 1
    page.close()


def test_a_scoped_page_shows_no_other_owner_s_jobs(
    context: Any, console: Console, alice_url: str, home: Home
) -> None:
    page = console.watch(context.new_page())
    page.goto(f"{alice_url}/jobs")
    page.locator(f'tr[data-job="{home.alice_job.id}"]').wait_for()

    assert home.bob_job.id not in page.content()
    page.goto(f"{alice_url}/rejected")
    assert "refused for key:bob" not in page.content()
    page.close()


def test_the_cost_page_charts_each_day_s_spend_against_the_persistent_machine(
    context: Any, console: Console, priced: PricedHome
) -> None:
    with serving(dashboard(priced.service, TokenGate(TOKEN, ADMIN))) as url:
        page = console.watch(context.new_page())
        page.goto(f"{url}/cost?token={TOKEN}&by=owner&vs=Standard_NC4as_T4_v3")
        page.wait_for_selector("#daily-chart canvas")
        chart = "document.getElementById('daily-chart').chart"

        assert page.evaluate(f"{chart}.series.map(s => s.label)") == [
            "day",
            "spend",
            "always on",
        ]
        assert page.evaluate(f"{chart}.data[0].length") == 8  # the 7 days back touch 8 dates
        assert page.locator("#groups tr[data-group]").count() == 2
        assert "$" in page.locator("#saving").inner_text()
        shot(page, "cost")
        page.close()
