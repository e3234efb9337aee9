"""The prediction service's settings: ``EPHEMERID_SERVING_*``, read by ``ServingSettings.from_env``.

The container in Azure is started as ``python -m ephemerid.serving`` with these alone; ``eph
serve`` maps its options onto the same fields. The bucket and registry come from the ordinary
``Settings`` (``EPHEMERID_HOME``, ``EPHEMERID_ARTIFACTS`` ...).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator

from ephemerid.errors import BadInput
from ephemerid.setting_kinds import EnvMapping, Flag, Interval, Seconds, _Settings
from ephemerid.settings import _explain, _summary
from ephemerid.spec import ModelRef

DEFAULT_PORT = 8080
WHOLE = "a whole number, 1 or more"


class ServingSettings(_Settings):
    """One prediction service: its model (or split), its keys and its limits."""

    model: str = Field("", alias="EPHEMERID_SERVING_MODEL")  # name@alias or name:version
    split: str = Field("", alias="EPHEMERID_SERVING_SPLIT")  # ref=weight,ref=weight
    keys: SecretStr = Field(SecretStr(""), alias="EPHEMERID_SERVING_KEYS")  # name=key,name=key
    # a host.json-style keys file (the dev host's devhost-keys.json): its keys are taken too
    keys_file: Path | None = Field(None, alias="EPHEMERID_SERVING_KEYS_FILE")
    port: int = Field(
        DEFAULT_PORT, ge=0, le=65535, alias="EPHEMERID_SERVING_PORT", description="a port, 0-65535"
    )
    host: str = Field("127.0.0.1", alias="EPHEMERID_SERVING_HOST")
    max_batch_rows: int = Field(
        4096,
        ge=1,
        alias="EPHEMERID_SERVING_MAX_BATCH_ROWS",
        description="a whole number, 1 or more",
    )
    max_wait_ms: Seconds = Field(2.0, alias="EPHEMERID_SERVING_MAX_WAIT_MS")
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1,
        alias="EPHEMERID_SERVING_MAX_BODY_BYTES",
        description="a whole number of bytes, 1 or more",
    )
    max_rows: int = Field(10_000, ge=1, alias="EPHEMERID_SERVING_MAX_ROWS", description=WHOLE)
    rate_per_s: Interval = Field(1000.0, alias="EPHEMERID_SERVING_RATE_PER_S")
    burst: int = Field(2000, ge=1, alias="EPHEMERID_SERVING_BURST", description=WHOLE)
    idle_exit_s: Seconds = Field(0.0, alias="EPHEMERID_SERVING_IDLE_EXIT_S")  # 0: never
    poll_s: Interval = Field(5.0, alias="EPHEMERID_SERVING_POLL_S")
    pin: Flag = Field(False, alias="EPHEMERID_SERVING_PIN")
    code: Path | None = Field(None, alias="EPHEMERID_SERVING_CODE")  # else the training snapshot
    entrypoint: str = Field("predict.py", alias="EPHEMERID_SERVING_ENTRYPOINT")

    @field_validator("model")
    @classmethod
    def _a_ref(cls, value: str) -> str:
        if value:
            ModelRef.parse(value)  # its ValueError names the form to write
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServingSettings:
        """From ``env`` (default ``os.environ``); ``overrides`` by field name win (None: none)."""
        env = os.environ if env is None else env
        values = {**EnvMapping(cls, env)()}
        values.update({cls.setting(k): v for k, v in overrides.items() if v is not None})
        try:
            settings = cls(**values)
        except ValidationError as exc:
            raise BadInput(_summary(list(_explain(cls, exc)))) from None
        if not settings.model and not settings.split:
            raise BadInput(
                "no model to serve: set EPHEMERID_SERVING_MODEL (name@alias or name:version) "
                "or EPHEMERID_SERVING_SPLIT (e.g. tabular:3=90,tabular:4=10)"
            )
        return settings

    def named_keys(self) -> dict[str, str]:
        """``EPHEMERID_SERVING_KEYS`` as name -> key; BadInput naming a malformed pair."""
        found: dict[str, str] = {}
        for pair in self.keys.get_secret_value().split(","):
            if not pair.strip():
                continue
            name, sep, key = pair.strip().partition("=")
            if not sep or not name.strip() or not key.strip():
                raise BadInput(
                    "EPHEMERID_SERVING_KEYS holds a pair that is not name=key (pair "
                    f"{len(found) + 1}): write comma-separated name=key pairs"
                )
            found[name.strip()] = key.strip()
        return found
