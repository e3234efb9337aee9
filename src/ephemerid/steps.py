"""What the service's mixins (``Parents``, ``Sweeps``, ``Fanout``) use of ``Service``: its
parts and steps, declared once for the type checker. ``Service`` itself defines them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ephemerid.artifacts import ArtifactStore
from ephemerid.models import ModelRegistry
from ephemerid.record import JobRecord, JobState, Submitted
from ephemerid.settings import Settings
from ephemerid.spec import JobSpec
from ephemerid.store import JobStore

if TYPE_CHECKING:
    from ephemerid.sweeps.spec import SweepSpec
    from ephemerid.transitions import Change


class ServiceSteps:
    store: JobStore
    artifacts: ArtifactStore
    settings: Settings
    models: ModelRegistry
    budgets: tuple[Any, ...]  # ephemerid.budgets.Budget, the rules file's

    if TYPE_CHECKING:

        def submit(
            self,
            spec: JobSpec | SweepSpec,
            *,
            key: str | None = None,
            source: str = "api",
            namespace: str | None = None,
            owner: str = "",
            admin: bool = False,
            python: str | None = None,
            parent: str = "",
        ) -> Submitted: ...
        def end(self, job_id: str, state: JobState, reason: str) -> JobRecord: ...
        def metric_history(self, job_id: str) -> dict[str, list[tuple[int | None, float]]]: ...
        def advance_sweep(self, sweep_id: str) -> JobRecord: ...
        def sweep_budget_spent(self, sweep: JobRecord) -> str: ...
        def admit(
            self, spec: JobSpec, backend: str, *, owner: str, source: str, parent: str
        ) -> tuple[JobSpec, Any]: ...
        def advance_fanout(self, parent_id: str) -> JobRecord: ...
        def _checked_backend(self, spec: JobSpec) -> str: ...
        def _check_staging(self, spec: JobSpec, owner: str, admin: bool) -> Any: ...
        def _known(self, job_id: str, key: str) -> JobRecord | None: ...
        def _transition(self, job_id: str, change: Change) -> tuple[JobRecord, bool]: ...
