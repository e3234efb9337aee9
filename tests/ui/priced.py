"""A home whose local compute has a price (``EPHEMERID_LOCAL_PRICE_PER_HOUR``), with finished jobs
of two owners made by the real service: what the cost page's tests and its screenshot read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from drive import cleaned_up, run, spec_for, write_script
from ephemerid.app import build_service
from ephemerid.record import JobRecord
from ephemerid.service import Service
from ephemerid.settings import Settings
from ui.conftest import ALICE, BOB

PRICE = 36.0  # USD per hour of local compute, set as a deployment would set it


@dataclass(frozen=True)
class PricedHome:
    service: Service
    alice_jobs: tuple[JobRecord, ...]
    bob_job: JobRecord

    @staticmethod
    def cost_of(jobs: tuple[JobRecord, ...] | list[JobRecord]) -> float:
        """What the jobs cost, from their own timestamps: requested to released, at PRICE."""
        held = 0.0
        for job in jobs:
            assert job.compute_requested_at is not None and job.released_at is not None
            held += (job.released_at - job.compute_requested_at).total_seconds()
        return held / 3600 * PRICE


@contextmanager
def priced_home(root: Path) -> Iterator[PricedHome]:
    settings = Settings.from_env(
        {"EPHEMERID_LOCAL_PRICE_PER_HOUR": str(PRICE)},
        home=root / "home",
        rules_path=root / "ephemerid.yaml",
        heartbeat_s=0.5,
        grace_s=2.0,
    )
    code = root / "code"
    code.mkdir()
    write_script(code, "import time\nprint('working', flush=True)\ntime.sleep(0.3)\n", "work.py")
    with cleaned_up(build_service(settings)) as service:
        alice = tuple(
            run(service, spec_for(code, "work.py", params={"n": n}), owner=ALICE.name)
            for n in range(2)
        )
        bob = run(service, spec_for(code, "work.py", params={"n": 9}), owner=BOB.name)
        assert all(j.price_per_hour == PRICE for j in (*alice, bob))
        yield PricedHome(service, alice, bob)
