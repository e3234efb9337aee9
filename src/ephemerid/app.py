"""Build the services once from settings and hand them down (no module-level clients)."""

from __future__ import annotations

from collections.abc import Callable

from ephemerid.artifacts import open_artifacts
from ephemerid.compute import build_backends
from ephemerid.record import JobRecord
from ephemerid.rules import Rules
from ephemerid.service import Service
from ephemerid.settings import Settings
from ephemerid.store import open_store


def build_service(settings: Settings, notify: Callable[[JobRecord], None] | None = None) -> Service:
    artifacts = open_artifacts(settings.artifacts_url)
    return Service(
        open_store(settings.store_url),
        artifacts,
        build_backends(settings, artifacts),
        settings,
        notify or (lambda job: None),
    )


def load_rules(settings: Settings) -> Rules:
    return Rules.load(settings.rules_path)
