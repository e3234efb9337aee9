"""The kinds of value a setting takes, and the source that reads settings from a mapping.

Shared by ``ephemerid.settings`` (the service's settings) and ``ephemerid.backend_settings`` (the
Azure backends'); each kind's description is what a bad value's error tells the user to write.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

PREFIX = "EPHEMERID_"
SUBSCRIPTION = "EPHEMERID_AZURE_SUBSCRIPTION_ID"  # both Azure backends read it: alone, no backend
IMDS_SCHEDULED_EVENTS = "http://169.254.169.254/metadata/scheduledevents?api-version=2020-07-01"


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


# The kinds of value a setting takes; each description is what the error tells the user to write.
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False, description="seconds, 0 or more")]
Interval = Annotated[float, Field(gt=0, allow_inf_nan=False, description="seconds, more than 0")]
Price = Annotated[float, Field(ge=0, allow_inf_nan=False, description="USD per hour, 0 or more")]
Count = Annotated[int, Field(ge=0, description="a whole number, 0 or more")]
Bytes = Annotated[int, Field(ge=1, description="a whole number of bytes, 1 or more")]
Flag = Annotated[bool, BeforeValidator(_strip), Field(description="true or false")]


def _off_or_a_second(value: float) -> float:
    if 0 < value < 1:
        raise ValueError("must be 0 (only when the run ends) or from 1 to 86400 seconds")
    return value


CheckpointInterval = Annotated[
    float,
    Field(ge=0, le=86400, allow_inf_nan=False, description="seconds, 0 (off) or 1 to 86400"),
    AfterValidator(_off_or_a_second),
]
Restarts = Annotated[int, Field(ge=0, le=10, description="a whole number from 0 to 10")]


def _no_query(value: str) -> str:
    if "?" in value:
        raise ValueError(
            "carries a query string (a SAS token?), which would travel to the compute: "
            "write the URL alone; ephemerid reaches storage with its identity or EPHEMERID_STORAGE"
        )
    return value


# A storage URL: its query string is refused (the error shows the value without it).
Url = Annotated[str, AfterValidator(_no_query)]


class EnvMapping(PydanticBaseSettingsSource):
    """A settings source over an explicit mapping (``os.environ`` or a test's dict).

    It reads each field by its alias, the exact environment variable name; fields without an
    alias are no settings. An empty value counts as unset.
    """

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        if not field.alias:  # a part of the settings (a backend's), not a setting
            return None, field_name, False
        return self.env.get(field.alias) or None, field.alias, False

    def __call__(self) -> dict[str, Any]:
        found = (self.get_field_value(f, n) for n, f in self.settings_cls.model_fields.items())
        return {name: value for value, name, _ in found if value is not None}


class _Settings(BaseSettings):
    """Settings read only through ``EnvMapping``: a model built directly reads no environment."""

    model_config = SettingsConfigDict(frozen=True, populate_by_name=True, case_sensitive=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @classmethod
    def setting(cls, field: str) -> str:
        """The environment variable that sets ``field`` (the field's name if it has none)."""
        info = cls.model_fields.get(field)
        return info.alias if info is not None and info.alias else field

    @classmethod
    def required_settings(cls) -> list[str]:
        """The settings that have no default, in the order the model declares them."""
        return [f.alias for f in cls.model_fields.values() if f.is_required() and f.alias]
