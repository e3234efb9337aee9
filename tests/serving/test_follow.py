"""Following the registry over a real server: a promotion switches without a failed request; a
version whose load raises is not switched to; --pin stays."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx

from serving.serving import KEY, NAME, Client, Registry, rows, wait_for


class Load:
    """Callers sending requests until stopped; every answer's status and version counted."""

    def __init__(self, client: Client, callers: int = 8) -> None:
        self.url = client.url
        self.statuses: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._call, args=(i,)) for i in range(callers)]
        for thread in self._threads:
            thread.start()

    def _call(self, index: int) -> None:
        with httpx.Client(base_url=self.url, timeout=120.0) as http:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    answer = http.post(
                        f"/v1/models/{NAME}:predict",
                        json={"rows": rows(index * 1_000_000 + n)},
                        headers={"x-ephemerid-key": KEY},
                    )
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                self.statuses[answer.status_code] += 1
                self.versions[answer.headers.get("x-ephemerid-model-version", "")] += 1
                if answer.status_code != 200:
                    self.failures.append(answer.text)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


def _health(client: Client) -> dict[int, dict]:
    return {v["version"]: v for v in client.http.get("/healthz").json()["versions"]}


def test_a_promotion_under_load_switches_with_no_failed_request_and_retires_the_old(
    registry: Registry,
) -> None:
    registry.publish(1.0, alias="production")
    v2 = registry.publish(2.0)
    with registry.serve() as client:
        old_pid = _health(client)[1]["pid"]
        load = Load(client)
        try:
            wait_for(lambda: load.versions["1"] >= 20, what="answers from version 1")
            registry.models.promote(NAME, v2, "production")
            wait_for(lambda: load.versions["2"] >= 20, what="answers from version 2")
        finally:
            load.stop()
        wait_for(lambda: 1 not in _health(client), what="version 1 retired")
        after = client.predict(rows(5))

    assert load.failures == []
    assert set(load.statuses) == {200}
    assert after.json()["version"] == 2 and after.json()["rows"] == [{"id": 5, "y": 10.0}]
    assert _gone(old_pid)


def test_a_version_whose_load_raises_is_not_switched_to_and_healthz_says_why(
    registry: Registry,
) -> None:
    registry.publish(1.0, alias="production")
    broken = registry.publish(9.0, fail=True)
    with registry.serve() as client:
        registry.models.promote(NAME, broken, "production")
        wait_for(lambda: broken in _health(client), what="the broken version tried")
        health = client.http.get("/healthz").json()
        answer = client.predict(rows(2))
        fixed = registry.publish(4.0, alias="production")  # the alias moves on: followed again
        wait_for(lambda: client.predict(rows(1)).json()["version"] == fixed, what="the switch")

    assert health["status"] == "ok"
    tried = {v["version"]: v for v in health["versions"]}
    assert tried[broken]["serving"] is False and tried[broken]["loaded"] is False
    assert "load raised RuntimeError: this version is broken on purpose" in tried[broken]["error"]
    assert tried[1]["serving"] is True
    assert answer.status_code == 200 and answer.json()["version"] == 1


def test_a_pinned_service_stays_while_another_follows_the_same_alias(registry: Registry) -> None:
    registry.publish(1.0, alias="production")
    v2 = registry.publish(2.0)
    with registry.serve(pin=True) as pinned, registry.serve() as following:
        registry.models.promote(NAME, v2, "production")
        wait_for(lambda: following.predict(rows(1)).json()["version"] == v2, what="the switch")
        time.sleep(1.0)  # five poll intervals more: a pinned one that followed would have switched
        assert pinned.predict(rows(1)).json()["version"] == 1


def _gone(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
