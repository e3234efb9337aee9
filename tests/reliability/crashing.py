"""The ephemerid process the crash tests kill, and the hook that stops it at one step.

Run as a script (``python crashing.py SPEC_JSON KEY``): it builds the service from ``EPHEMERID_*``
settings as the function app does, submits one job, and completes it when its ``result.json``
lands, as the event would. With ``EPHEMERID_TEST_CRASH_AT`` set to a step (read here and only
here, never in product code), it stops there: it writes the step's name to the file named by
``EPHEMERID_TEST_CRASH_REACHED`` and sleeps until the test SIGKILLs it. The stop is made by
wrapping the real store and compute backend: every call goes to them unchanged; the wrapper
only pauses before or after the call that makes the step.

Steps that last long enough to see from outside (the user's code running; on azure-vm a DELETE
the simulator holds) are not paused here: the test watches for them and kills the process then.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

CRASH_AT = "EPHEMERID_TEST_CRASH_AT"
REACHED = "EPHEMERID_TEST_CRASH_REACHED"

# The job's life, in order. The runner starts between "provision started" and "handle saved".
STEPS = (
    "record created",  # the store holds the job; job.json not written yet
    "launch written",  # job.json written; the record still ACCEPTED
    "provision started",  # the record PROVISIONING; the backend not called yet
    "runner started",  # the backend started the runner; its handle not in the record yet
    "handle saved",  # the record RUNNING with the handle
    "running",  # the user's code runs (seen from outside)
    "result written",  # result.json there; the record not terminal yet
    "teardown sent",  # teardown asked, not confirmed (seen from outside)
    "teardown confirmed",  # the backend confirmed; the record not yet `released`
)


def pause(step: str) -> None:
    """Say the step is reached, then wait to be killed."""
    reached = Path(os.environ[REACHED])
    partial = reached.with_suffix(".tmp")
    partial.write_text(step)
    partial.replace(reached)
    while True:
        time.sleep(60)


class PausingStore:
    """The real job store, paused at the store-side steps."""

    def __init__(self, inner: Any, step: str) -> None:
        self.inner, self.step = inner, step

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def create_if_absent(self, record: Any) -> Any:
        stored, created = self.inner.create_if_absent(record)
        if created and self.step == "record created":
            pause(self.step)
        return stored, created

    def update(self, record: Any) -> Any:
        from ephemerid.record import JobState

        if record.state is JobState.PROVISIONING and self.step == "launch written":
            pause(self.step)
        if record.state is JobState.RUNNING and record.handle and self.step == "runner started":
            pause(self.step)
        if record.state.terminal and self.step == "result written":
            pause(self.step)
        stored = self.inner.update(record)
        if stored.state is JobState.PROVISIONING and self.step == "provision started":
            pause(self.step)
        if stored.state is JobState.RUNNING and self.step == "handle saved":
            pause(self.step)
        return stored


class PausingCompute:
    """The real compute backend, paused while its teardown is under way or once it is confirmed."""

    def __init__(self, inner: Any, step: str) -> None:
        self.inner, self.step = inner, step
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def teardown(self, handle: Any) -> bool:
        if self.step == "teardown sent":  # the kill lands while the teardown is under way
            threading.Thread(target=self.inner.teardown, args=(handle,), daemon=True).start()
            pause(self.step)
        confirmed: bool = self.inner.teardown(handle)
        if confirmed and self.step == "teardown confirmed":
            pause(self.step)
        return confirmed


def build(step: str) -> Any:
    """The service as ``ephemerid.app.build_service`` makes it, its store and compute wrapped."""
    from ephemerid.artifacts import open_artifacts
    from ephemerid.compute import build_backends
    from ephemerid.service import Service
    from ephemerid.settings import Settings
    from ephemerid.store import open_store

    settings = Settings.from_env()
    storage = settings.storage.as_env()
    artifacts = open_artifacts(settings.artifacts_url, storage)
    backends = {n: PausingCompute(b, step) for n, b in build_backends(settings, artifacts).items()}
    store = PausingStore(open_store(settings.store_url, storage), step)
    return Service(store, artifacts, backends, settings)  # type: ignore[arg-type]


def main(spec_json: str, key: str) -> None:
    from ephemerid import names
    from ephemerid.record import ComputeState
    from ephemerid.spec import validate_spec

    service = build(os.environ.get(CRASH_AT, ""))
    job = service.submit(validate_spec(json.loads(spec_json)), key=key).job
    result = names.run_key(job.id, names.RESULT_FILE)
    while not (job.state.terminal and job.compute_state is ComputeState.RELEASED):
        if service.artifacts.stat(result):
            job = service.complete(job.id)
        time.sleep(0.05)
    while True:  # over: wait to be killed like any other step
        time.sleep(60)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
