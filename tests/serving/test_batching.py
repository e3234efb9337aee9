"""Micro-batching over a real server: concurrent callers share predict calls, and each gets
exactly its own rows back."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa

from ephemerid.serving.batcher import Batcher
from ephemerid.serving.process import ModelProcess
from ephemerid.serving.source import Sources
from ephemerid.spec import ModelRef
from serving.serving import KEY, NAME, Client, Registry, metric, rows

CALLERS = 64
REQUESTS_EACH = 4


def _calls(client: Client) -> float:
    text = client.get("/metrics").text
    return metric(text, "ephemerid_serving_predict_calls_total", model=NAME, version="1")


def _many_callers(client: Client, payload_of: Any) -> dict[int, list[httpx.Response]]:
    """CALLERS threads released together, each sending REQUESTS_EACH requests of its own."""
    start = threading.Barrier(CALLERS)
    answers: dict[int, list[httpx.Response]] = {}

    def caller(index: int) -> None:
        with httpx.Client(base_url=client.url, timeout=120.0) as http:
            start.wait()
            answers[index] = [
                http.post(
                    f"/v1/models/{NAME}:predict",
                    json={"rows": payload_of(index, n)},
                    headers={"x-ephemerid-key": KEY},
                )
                for n in range(REQUESTS_EACH)
            ]

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return answers


def test_concurrent_callers_each_get_exactly_their_rows_in_fewer_predict_calls(
    registry: Registry,
) -> None:
    registry.publish(3.0, alias="production")
    with registry.serve(max_wait_ms=50, max_batch_rows=4096) as client:
        before = _calls(client)

        def payload(index: int, n: int) -> list[dict[str, Any]]:  # distinct ids, 1 to 3 rows
            first = (index * REQUESTS_EACH + n) * 10
            return rows(*range(first, first + 1 + (index + n) % 3))

        answers = _many_callers(client, payload)
        calls = _calls(client) - before

    assert len(answers) == CALLERS
    for index, answered in answers.items():
        for n, answer in enumerate(answered):
            assert answer.status_code == 200, answer.text
            sent = payload(index, n)
            assert answer.json()["rows"] == [{"id": r["id"], "y": r["x"] * 3.0} for r in sent]
    assert calls < CALLERS * REQUESTS_EACH


def test_without_batching_each_request_is_one_predict_call(registry: Registry) -> None:
    registry.publish(3.0, alias="production")
    with registry.serve(max_batch_rows=1) as client:
        before = _calls(client)
        answers = _many_callers(client, lambda index, n: rows(index * 100 + n))
        calls = _calls(client) - before

    assert all(a.status_code == 200 for answered in answers.values() for a in answered)
    assert calls == CALLERS * REQUESTS_EACH


def test_a_request_that_makes_predict_raise_fails_alone_in_its_batch(registry: Registry) -> None:
    registry.publish(3.0, alias="production")
    with registry.serve(max_wait_ms=50) as client:

        def payload(index: int, n: int) -> list[dict[str, Any]]:
            return [{"id": index, "x": -1.0 if index == 5 else float(n)}]

        answers = _many_callers(client, payload)

    for index, answered in answers.items():
        for answer in answered:
            assert answer.status_code == (502 if index == 5 else 200), answer.text


def test_a_batch_never_holds_more_than_max_batch_rows(registry: Registry, tmp_path: Path) -> None:
    version = registry.models.resolve(ModelRef.parse(f"{NAME}:{registry.publish(2.0)}"))
    sources = Sources(registry.artifacts, tmp_path / "cache", registry.code, "predict.py")
    process = ModelProcess(sources.loadable(version)).start()

    async def score() -> list[pa.Table]:
        await process.attach()
        batcher = Batcher(process, max_batch_rows=4, max_wait_s=0.5, arriving=lambda: 1)
        batcher.start()
        tables = [pa.table({"id": [i, i], "x": [1.0, float(i)]}) for i in range(10)]
        try:
            return await asyncio.gather(*(batcher.predict(t) for t in tables))
        finally:
            await batcher.close()
            await process.aclose()

    answers = asyncio.run(score())

    assert [a.column("y").to_pylist() for a in answers] == [[2.0, 2.0 * i] for i in range(10)]
    assert process.predict_calls == 5  # 20 rows, 4 at most a call: two requests of 2 each time
