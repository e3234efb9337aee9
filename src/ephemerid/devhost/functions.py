"""Read a function app the way the Functions host indexes it: functions, triggers, bindings.

``load_app`` imports ``function_app.py`` (a file, or the folder holding it) and finds its
FunctionApp; ``read_functions`` lists the registered functions with their trigger binding, its
``%NAME%`` app settings resolved from the environment (falling back to ephemerid's local
defaults), and the user function to call.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import itertools
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import azure.functions as func

from ephemerid.errors import BadInput

APP_FILE = "function_app.py"
_SETTING = re.compile(r"%([^%]+)%")
_counter = itertools.count()


@dataclass(frozen=True)
class HostedFunction:
    """One registered function: its trigger binding (settings resolved) and the user function."""

    name: str
    trigger: str
    binding: Mapping[str, Any]
    call: Callable[..., Any] = field(repr=False)
    unsupported: tuple[str, ...] = ()

    def __call__(self, value: Any) -> Any:
        """Invoke the user function as the worker does: the trigger value by its argument name."""
        result = self.call(**{self.binding["name"]: value})
        if inspect.isawaitable(result):
            return asyncio.run(_awaited(result))
        return result


async def _awaited(result: Any) -> Any:
    return await result


def ephemerid_app() -> func.FunctionApp:
    """ephemerid's own function app, built exactly as the repository's ``function_app.py``."""
    from ephemerid.functions import handlers_from_settings, register

    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    register(app, handlers_from_settings)
    return app


def load_app(path: Path) -> func.FunctionRegister:
    """The FunctionApp that ``path`` (``function_app.py``, or its folder) creates."""
    file = path / APP_FILE if path.is_dir() else path
    if not file.is_file():
        raise BadInput(f"no function app at '{file}': pass --app with the path of {APP_FILE}")
    folder = str(file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # as the worker does: the app imports its own modules
    spec = importlib.util.spec_from_file_location(f"_devhost_app_{next(_counter)}", file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    apps = [v for v in vars(module).values() if isinstance(v, func.FunctionRegister)]
    if len(apps) != 1:
        raise BadInput(f"{file} must create exactly one FunctionApp; it creates {len(apps)}")
    return apps[0]


def read_functions(
    app: func.FunctionRegister, env: Mapping[str, str], defaults: Mapping[str, str]
) -> list[HostedFunction]:
    """The app's functions with their trigger bindings, ``%NAME%`` resolved from ``env``."""
    # get_functions() records the names it has seen and refuses them a second time; forget
    # them, so the same app object can be read again (a second dev host, a restart).
    app.functions_bindings = None
    hosted = []
    for function in app.get_functions():
        name = str(function.get_function_name())
        trigger = function.get_trigger()
        if trigger is None:  # get_functions() refuses these already
            raise BadInput(f"function '{name}' has no trigger")
        binding = _plain(trigger.get_dict_repr())
        resolved = {k: _resolve(v, env, defaults, name) for k, v in binding.items()}
        others = [
            str(_plain(b.get_dict_repr()).get("type"))
            for b in function.get_bindings()
            if b is not trigger and not _is_http_return(b.get_dict_repr())
        ]
        hosted.append(
            HostedFunction(
                name, str(resolved["type"]), resolved, function.get_user_function(), tuple(others)
            )
        )
    return hosted


def _is_http_return(binding: Mapping[str, Any]) -> bool:
    return bool(_plain(binding).get("type") == "http" and binding.get("name") == "$return")


def _plain(value: Any) -> Any:
    """Enums (directions, methods, auth levels) as their values, all the way down."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _resolve(value: Any, env: Mapping[str, str], defaults: Mapping[str, str], fn: str) -> Any:
    if not isinstance(value, str):
        return value

    def setting(found: re.Match[str]) -> str:
        name = found.group(1)
        resolved = env.get(name) or defaults.get(name)
        if not resolved:
            raise BadInput(
                f"function '{fn}' names app setting %{name}%, which is not set: "
                f"set {name} in the environment"
            )
        return resolved

    return _SETTING.sub(setting, value)
