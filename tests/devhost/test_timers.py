"""The timer function on a local clock: once per due time, and once across dev hosts."""

from __future__ import annotations

import json
from pathlib import Path

from devhost.conftest import FakeClock, MakeHost
from drive import finish
from ephemerid.functions import handlers_from_settings
from ephemerid.record import JobState


def test_a_cron_rule_fires_exactly_once_across_two_dev_hosts_sharing_a_store(
    make_host: MakeHost, clock: FakeClock, tmp_path: Path
) -> None:
    home = tmp_path / "shared"
    first, second = make_host(home=home), make_host(home=home)
    assert first.service.settings.store_url == second.service.settings.store_url

    first.poll(), second.poll()
    assert first.invocations == second.invocations == []  # 10:00:30: the next tick is 10:01

    clock.advance(30.2)  # both hosts read the same fake time: 10:01:00.2
    first.poll()
    used_by_first = first.service
    handlers_from_settings.cache_clear()  # the second builds services of its own, as another
    second.poll()  # instance would: only the job store is shared
    assert second.service is not used_by_first
    first.poll(), second.poll()  # the same due time never fires twice

    for host in (first, second):
        assert [(c.function, c.detail, c.ok) for c in host.invocations] == [
            ("tick", "due 2030-01-01T10:01:00+00:00", True)
        ]
    [job] = first.service.store.list()
    assert job.source == "schedule hourly"
    assert job.key.startswith("cron:hourly@")
    # the first host's services started it: let them see it through and give the compute back
    assert finish(used_by_first, job.id).state is JobState.SUCCEEDED


TICKS_APP = """
import json, os
import azure.functions as func

app = func.FunctionApp()


@app.timer_trigger(arg_name="timer", schedule="0 * * * * *")
def every_minute(timer: func.TimerRequest) -> None:
    with open(os.environ["TICKS_FILE"], "a") as out:
        out.write(json.dumps({"past_due": timer.past_due}) + "\\n")
"""


def test_a_tick_long_after_its_due_time_is_past_due_and_missed_ones_are_not_replayed(
    make_host: MakeHost, clock: FakeClock, tmp_path: Path
) -> None:
    app = tmp_path / "ticks" / "function_app.py"
    app.parent.mkdir()
    app.write_text(TICKS_APP)
    ticks = tmp_path / "ticks.jsonl"
    host = make_host(app=app, settings={"TICKS_FILE": str(ticks)})

    clock.advance(30)  # 10:01:00, on time
    host.poll()
    clock.advance(600)  # ten ticks missed while the host was busy
    host.poll()
    host.poll()

    assert [json.loads(line) for line in ticks.read_text().splitlines()] == [
        {"past_due": False},
        {"past_due": True},
    ]
    assert [c.detail for c in host.invocations] == [
        "due 2030-01-01T10:01:00+00:00",
        "due 2030-01-01T10:02:00+00:00",
    ]
