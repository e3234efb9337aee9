"""The demo on Azure storage: jobs in Table Storage and the bucket in Blob Storage, on Azurite.

The same run as ``eph demo --storage azurite``: real PyTorch training and scoring on local
compute, with every record and artifact going through the Azure adapters.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from batching import check_demo_scoring
from ephemerid import names
from ephemerid.artifacts import get_bytes, open_artifacts
from ephemerid.artifacts.blob import BlobArtifactStore
from ephemerid.cli.demo import run_demo
from ephemerid.record import ComputeState, JobState
from ephemerid.spec import JobKind
from ephemerid.store import open_store

pytestmark = pytest.mark.slow


@pytest.fixture
def azure_env(azurite_connection: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point the demo at Azurite as ``eph demo --storage azurite`` does; runners inherit it."""
    values = {
        "EPHEMERID_STORAGE": azurite_connection,
        "EPHEMERID_STORE": f"table://demo{uuid.uuid4().hex}",
        "EPHEMERID_ARTIFACTS": "az://",
    }
    artifacts = open_artifacts("az://", values)
    assert isinstance(artifacts, BlobArtifactStore)
    for container in artifacts.client.list_containers():  # the demo starts from an empty bucket
        artifacts.client.delete_container(container.name)
    artifacts.client.close()
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def test_the_demo_runs_on_table_and_blob_storage(azure_env: dict[str, str], tmp_path: Path) -> None:
    out = io.StringIO()

    ok = run_demo(tmp_path / "demo", Console(file=out, width=200), as_json=False)

    assert ok, out.getvalue()
    assert "bucket: az://" in out.getvalue()
    assert "live compute: 0" in out.getvalue()  # the text report (test_e2e runs --json)
    store = open_store(azure_env["EPHEMERID_STORE"], azure_env)
    artifacts = open_artifacts("az://", azure_env)
    assert isinstance(artifacts, BlobArtifactStore)
    try:
        jobs = {job.spec.kind: job for job in store.list()}
        assert set(jobs) == {JobKind.TRAIN, JobKind.PREDICT}
        for job in jobs.values():
            assert job.state is JobState.SUCCEEDED, job.reason
            assert job.compute_state is ComputeState.RELEASED
        assert store.list_open() == []

        version = json.loads(get_bytes(artifacts, f"{names.model_key('tabular', 1)}/version.json"))
        assert version["job_id"] == jobs[JobKind.TRAIN].id
        predict = jobs[JobKind.PREDICT]
        check_demo_scoring(artifacts, predict)
    finally:
        store.close()
        artifacts.client.close()
