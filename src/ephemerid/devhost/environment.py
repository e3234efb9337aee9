"""App settings for the function app, in the one place that changes ``os.environ``.

In Azure the app settings are environment variables, and the function app builds its services
once from them (``handlers_from_settings`` is cached). The dev host and the demo run that same
code, so they set the settings in ``os.environ`` for as long as they run and drop the cached
services on the way in and on the way out: nothing built from one run's settings outlives it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping


@contextlib.contextmanager
def function_app_settings(
    values: Mapping[str, str | None], forget_services: Callable[[], None]
) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` (``None`` unsets one) until the block ends.

    ``forget_services`` drops what the app built from the settings before, so the next event
    builds it again from these (``handlers_from_settings.cache_clear``).
    """
    saved = {key: os.environ.get(key) for key in values}
    _apply(values)
    forget_services()
    try:
        yield
    finally:
        _apply(saved)
        forget_services()


def _apply(values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
