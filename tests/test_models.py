"""ModelRegistry: versions claimed atomically, aliases, and lookups that say what exists."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from ephemerid.artifacts import ArtifactStore, get_bytes, open_artifacts, put_bytes
from ephemerid.errors import BadInput, NotFound
from ephemerid.models import READY, ModelRegistry
from ephemerid.spec import ModelRef

THREADS = 8


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return open_artifacts(f"file://{tmp_path / 'bucket'}")


@pytest.fixture
def registry(store: ArtifactStore) -> ModelRegistry:
    return ModelRegistry(store)


def trained(store: ArtifactStore, job_id: str, weights: bytes = b"weights") -> str:
    """A finished job's model/ output, as the runner leaves it; returns its prefix."""
    prefix = f"runs/{job_id}/outputs/model"
    put_bytes(store, f"{prefix}/weights.bin", weights)
    put_bytes(store, f"{prefix}/meta/config.json", b'{"layers": 2}')
    return prefix


def register(registry: ModelRegistry, name: str, job_id: str, loss: float = 0.5) -> int:
    source = trained(registry.artifacts, job_id, weights=job_id.encode())
    return registry.register(name, source, job_id=job_id, metrics={"loss": loss}).version


def test_registering_gives_version_one_then_two(
    registry: ModelRegistry, store: ArtifactStore
) -> None:
    first = registry.register(
        "churn", trained(store, "job-a", b"A"), job_id="job-a", metrics={"loss": 0.4}
    )
    second = registry.register(
        "churn", trained(store, "job-b", b"B"), job_id="job-b", metrics={"loss": 0.3}
    )

    assert (first.version, second.version) == (1, 2)
    assert (first.ref, second.ref) == ("churn:1", "churn:2")
    assert first.state == second.state == READY
    assert get_bytes(store, f"{first.files}/weights.bin") == b"A"
    assert get_bytes(store, f"{second.files}/weights.bin") == b"B"
    assert get_bytes(store, f"{second.files}/meta/config.json") == b'{"layers": 2}'
    assert [(v.version, v.job_id, v.metrics) for v in registry.versions("churn")] == [
        (1, "job-a", {"loss": 0.4}),
        (2, "job-b", {"loss": 0.3}),
    ]


def test_each_model_name_counts_its_own_versions(registry: ModelRegistry) -> None:
    assert register(registry, "churn", "job-a") == 1
    assert register(registry, "fraud", "job-b") == 1
    assert registry.names() == ["churn", "fraud"]


def test_registering_the_same_job_twice_returns_the_same_version(
    registry: ModelRegistry,
) -> None:
    first = register(registry, "churn", "job-a")
    again = register(registry, "churn", "job-a")

    assert again == first
    assert [v.version for v in registry.versions("churn")] == [first]
    assert register(registry, "churn", "job-b") == first + 1


def test_jobs_registering_at_once_get_different_versions(registry: ModelRegistry) -> None:
    sources = {i: trained(registry.artifacts, f"job-{i}", f"w{i}".encode()) for i in range(THREADS)}
    start = threading.Barrier(THREADS)
    versions: dict[int, int] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            versions[i] = registry.register(
                "churn", sources[i], job_id=f"job-{i}", metrics={}
            ).version
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(versions.values()) == list(range(1, THREADS + 1))
    for i, number in versions.items():
        found = registry.resolve(ModelRef(name="churn", version=number))
        assert found.job_id == f"job-{i}"
        assert get_bytes(registry.artifacts, f"{found.files}/weights.bin") == f"w{i}".encode()


def test_one_job_registering_twice_at_once_gets_one_version(tmp_path: Path) -> None:
    for trial in range(10):  # each trial loses the race more often than not
        store = open_artifacts(f"file://{tmp_path / f'bucket-{trial}'}")
        registry = ModelRegistry(store)
        source = trained(store, "job-a")
        start = threading.Barrier(THREADS)

        def run(
            registry: ModelRegistry = registry,
            source: str = source,
            start: threading.Barrier = start,
        ) -> None:
            start.wait()
            registry.register("churn", source, job_id="job-a", metrics={})

        threads = [threading.Thread(target=run) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert [v.job_id for v in registry.versions("churn")] == ["job-a"]


def test_promote_then_resolve_by_alias_and_by_version(registry: ModelRegistry) -> None:
    one = register(registry, "churn", "job-a")
    two = register(registry, "churn", "job-b")

    registry.promote("churn", one, "production")
    assert registry.resolve(ModelRef.parse("churn@production")).job_id == "job-a"
    assert registry.resolve(ModelRef.parse(f"churn:{two}")).job_id == "job-b"

    registry.promote("churn", two, "production")
    assert registry.resolve(ModelRef.parse("churn@production")).version == two
    assert registry.aliases("churn") == {"production": two}


def test_resolving_an_unknown_model_lists_the_known_ones(registry: ModelRegistry) -> None:
    register(registry, "churn", "job-a")
    register(registry, "fraud", "job-b")

    with pytest.raises(NotFound) as caught:
        registry.resolve(ModelRef.parse("chrun@production"))

    message = str(caught.value)
    assert "'chrun'" in message
    assert "churn" in message
    assert "fraud" in message


def test_resolving_with_no_models_at_all_says_so(registry: ModelRegistry) -> None:
    with pytest.raises(NotFound, match="none yet"):
        registry.resolve(ModelRef.parse("churn:1"))


def test_resolving_an_unknown_alias_says_how_to_promote(registry: ModelRegistry) -> None:
    one = register(registry, "churn", "job-a")
    registry.promote("churn", one, "staging")

    with pytest.raises(NotFound) as caught:
        registry.resolve(ModelRef.parse("churn@production"))

    message = str(caught.value)
    assert "'production'" in message
    assert "staging" in message
    assert "eph models promote churn:<version> production" in message


def test_resolving_an_unknown_version_lists_the_versions(registry: ModelRegistry) -> None:
    register(registry, "churn", "job-a")
    register(registry, "churn", "job-b")

    with pytest.raises(NotFound) as caught:
        registry.resolve(ModelRef.parse("churn:7"))

    message = str(caught.value)
    assert "version 7" in message
    assert "versions: 1, 2" in message


@pytest.mark.parametrize("alias", ["bad alias", "12", "../prod", "", "-prod", "a" * 65])
def test_promote_refuses_a_bad_alias_name(registry: ModelRegistry, alias: str) -> None:
    one = register(registry, "churn", "job-a")

    with pytest.raises(BadInput, match="alias"):
        registry.promote("churn", one, alias)

    assert registry.aliases("churn") == {}


def test_promoting_a_version_that_does_not_exist_is_not_found(registry: ModelRegistry) -> None:
    register(registry, "churn", "job-a")

    with pytest.raises(NotFound, match="versions: 1"):
        registry.promote("churn", 5, "production")

    assert registry.aliases("churn") == {}
