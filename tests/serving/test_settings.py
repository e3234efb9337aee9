"""The service's settings: exact names, defaults, and one error naming every bad one."""

from __future__ import annotations

import pytest

from ephemerid.errors import BadInput
from ephemerid.serving.guard import Keys, RateLimits
from ephemerid.serving.settings import ServingSettings


def test_the_settings_are_read_by_their_exact_names() -> None:
    env = {
        "EPHEMERID_SERVING_MODEL": "tabular@production",
        "EPHEMERID_SERVING_SPLIT": "tabular:3=90,tabular:4=10",
        "EPHEMERID_SERVING_KEYS": "app=k1,ops=k2",
        "EPHEMERID_SERVING_PORT": "9000",
        "EPHEMERID_SERVING_HOST": "0.0.0.0",
        "EPHEMERID_SERVING_MAX_BATCH_ROWS": "64",
        "EPHEMERID_SERVING_MAX_WAIT_MS": "5",
        "EPHEMERID_SERVING_MAX_BODY_BYTES": "1000",
        "EPHEMERID_SERVING_MAX_ROWS": "10",
        "EPHEMERID_SERVING_RATE_PER_S": "3",
        "EPHEMERID_SERVING_BURST": "4",
        "EPHEMERID_SERVING_IDLE_EXIT_S": "60",
        "EPHEMERID_SERVING_POLL_S": "2",
        "EPHEMERID_SERVING_PIN": "true",
    }
    s = ServingSettings.from_env(env)

    assert (s.model, s.split, s.port, s.host) == (
        "tabular@production",
        "tabular:3=90,tabular:4=10",
        9000,
        "0.0.0.0",
    )
    assert (s.max_batch_rows, s.max_wait_ms, s.max_body_bytes, s.max_rows) == (64, 5, 1000, 10)
    assert (s.rate_per_s, s.burst, s.idle_exit_s, s.poll_s, s.pin) == (3, 4, 60, 2, True)
    assert s.named_keys() == {"app": "k1", "ops": "k2"}
    assert "k1" not in repr(s)


def test_defaults_listen_on_loopback_8080_and_never_exit() -> None:
    s = ServingSettings.from_env({"EPHEMERID_SERVING_MODEL": "tabular:1"})

    assert (s.host, s.port, s.idle_exit_s, s.pin) == ("127.0.0.1", 8080, 0.0, False)


def test_every_bad_setting_is_named_at_once() -> None:
    env = {
        "EPHEMERID_SERVING_MODEL": "tabular",
        "EPHEMERID_SERVING_MAX_ROWS": "0",
        "EPHEMERID_SERVING_PIN": "perhaps",
    }
    with pytest.raises(BadInput) as caught:
        ServingSettings.from_env(env)

    message = str(caught.value)
    assert "3 bad settings" in message
    for name in ("EPHEMERID_SERVING_MODEL", "EPHEMERID_SERVING_MAX_ROWS", "EPHEMERID_SERVING_PIN"):
        assert name in message


def test_no_model_or_no_key_is_refused_saying_what_to_set() -> None:
    with pytest.raises(BadInput, match="EPHEMERID_SERVING_MODEL"):
        ServingSettings.from_env({})
    with pytest.raises(BadInput, match="EPHEMERID_SERVING_KEYS"):
        Keys.of({}, None)
    with pytest.raises(BadInput, match="name=key"):
        ServingSettings.from_env(
            {"EPHEMERID_SERVING_MODEL": "t:1", "EPHEMERID_SERVING_KEYS": "justakey"}
        ).named_keys()


def test_a_bucket_refills_at_its_rate_and_says_how_long_to_wait() -> None:
    now = [0.0]
    limits = RateLimits(rate_per_s=2.0, burst=2, clock=lambda: now[0])

    assert [limits.take("a"), limits.take("a")] == [0.0, 0.0]
    assert limits.take("a") == pytest.approx(0.5)
    assert limits.take("b") == 0.0
    now[0] = 0.5
    assert limits.take("a") == 0.0
