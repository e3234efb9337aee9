"""Helpers for the tests of the backends that rent through Azure (azure-vm, azure-ml)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime

from drive import cleaned_up
from ephemerid.app import build_service
from ephemerid.reaper import reap
from ephemerid.record import JobRecord, job_id_for, utcnow
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec
from ephemerid.testing.settle import settle as settle_jobs


def ephemerid(env: dict[str, str], **more: str) -> AbstractContextManager[Service]:
    """A service built from settings, as the function app builds it, cleaned up after."""
    return cleaned_up(build_service(Settings.from_env({**env, **more})))


def settle(
    service: Service, job_ids: list[str], timeout: float = 60, now: datetime | None = None
) -> list[JobRecord]:
    """Run the reaper, as its timer would, until every job is over and its compute given back."""
    return settle_jobs(
        service, job_ids, timeout=timeout, on_tick=lambda: reap(service, now and max(now, utcnow()))
    )


def record(spec: JobSpec, key: str = "direct") -> JobRecord:
    """A job record that never went through submit: for calling a backend's verbs directly."""
    return JobRecord(id=job_id_for("train", key), key=key, spec=spec, source="test")
