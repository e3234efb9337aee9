"""Build the services once from settings and hand them down (no module-level clients)."""

from __future__ import annotations

from collections.abc import Callable

from ephemerid.artifacts import open_artifacts
from ephemerid.budgets import load_budgets
from ephemerid.compute import build_backends
from ephemerid.record import JobRecord
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.store import open_store


def build_service(settings: Settings, notify: Callable[[JobRecord], None] | None = None) -> Service:
    storage = settings.storage.as_env()  # the connection, given to the adapters that need it
    artifacts = open_artifacts(settings.artifacts_url, storage)
    return Service(
        open_store(settings.store_url, storage),
        artifacts,
        build_backends(settings, artifacts),
        settings,
        notify,
        load_budgets(settings.rules_path),
    )


def load_rules(settings: Settings) -> Rules:
    return Rules.load(settings.rules_path)
