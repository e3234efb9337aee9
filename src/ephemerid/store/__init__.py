"""JobStore: the port every job record goes through, and the registry of its adapters.

Every transition is a compare-and-swap on ``version``, so two function instances handling the
same event cannot both move a job forward.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from ephemerid.errors import BadInput
from ephemerid.names import JOBS_TABLE
from ephemerid.record import JobRecord, JobState


class JobStore(Protocol):
    def create_if_absent(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Insert ``record`` unless one with its key exists; return (stored, created)."""

    def get(self, job_id: str) -> JobRecord:
        """The record, or NotFound naming the job."""

    def update(self, record: JobRecord) -> JobRecord:
        """Store ``record`` if the stored version still equals ``record.version``.

        Returns the stored record with its new version; raises Conflict otherwise.
        """

    def list(self, states: Iterable[JobState] | None = None) -> list[JobRecord]:
        """Records, newest first, optionally only those in ``states``."""

    def list_open(self) -> builtins.list[JobRecord]:
        """Records that are ``open``: unfinished, or whose compute is not yet released.

        The reaper walks these every pass, so adapters keep them cheap to find however long
        the history grows.
        """

    def close(self) -> None: ...


def _sqlite(target: str, storage: Mapping[str, str]) -> JobStore:
    from ephemerid.store.sqlite import SqliteJobStore

    return SqliteJobStore(target)


def _table(target: str, storage: Mapping[str, str]) -> JobStore:
    from ephemerid.azure.connection import storage_connection
    from ephemerid.store.table import TableJobStore

    return TableJobStore(storage_connection(storage), target or JOBS_TABLE)


# scheme -> factory taking the rest of the URL and the storage connection's settings
ADAPTERS: dict[str, Callable[[str, Mapping[str, str]], JobStore]] = {
    "sqlite": _sqlite,
    "table": _table,
}


def open_store(url: str, storage: Mapping[str, str] | None = None) -> JobStore:
    """``sqlite:///abs/path/jobs.db`` or ``table://jobs`` (Azure Table Storage).

    ``storage`` is the EPHEMERID_STORAGE connection's settings by name (``Settings.storage``);
    none given, there is no connection, and a ``table://`` store says which settings to set.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ADAPTERS:
        raise BadInput(
            f"job store URL '{url}' is not supported: use one of "
            + ", ".join(f"{name}://..." for name in ADAPTERS)
        )
    return ADAPTERS[scheme](rest, storage or {})
