"""The function app serves the dashboard from /api/ui/{*path}: the same pages, for the caller
its function key (or App Service principal) names, with the key carried along by every link."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from ephemerid.functions import register
from ephemerid.functions.handlers import Handlers
from ephemerid.rules import Rules
from ui.conftest import Home

KEYS = {"functionKeys": {"alice": "alice-key-0123"}, "masterKey": "master-key-0123"}


@pytest.fixture
def dashboard(home: Home, tmp_path: Path) -> Any:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps(KEYS))
    rules = Rules.parse("rules: []\n", base=tmp_path)
    return route_of(Handlers(home.service, rules, keys_file=str(keys)))


def route_of(handlers: Handlers) -> Any:
    """The registered ``dashboard`` function of a function app over ``handlers``."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    register(app, lambda: handlers)
    return next(
        f.get_user_function() for f in app.get_functions() if f.get_function_name() == "dashboard"
    )


def ask(
    route: object,
    path: str,
    key: str,
    method: str = "GET",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> func.HttpResponse:
    request = func.HttpRequest(
        method,
        f"http://localhost/api/ui/{path}?code={key}",
        params={"code": key},
        route_params={"path": path},
        body=body,
        headers=headers or {},
    )
    return route(request)  # type: ignore[operator,no-any-return]


def test_a_function_key_s_caller_sees_only_its_own_jobs(dashboard: object, home: Home) -> None:
    page = ask(dashboard, "jobs", "alice-key-0123")

    assert page.status_code == 200
    listed = set(re.findall(r'data-job="([^"]+)"', page.get_body().decode()))
    assert home.alice_job.id in listed and home.bob_job.id not in listed
    assert ask(dashboard, f"jobs/{home.bob_job.id}", "alice-key-0123").status_code == 404


def test_every_link_carries_the_key_and_the_route_s_prefix(dashboard: object, home: Home) -> None:
    html = ask(dashboard, f"jobs/{home.alice_job.id}", "alice-key-0123").get_body().decode()

    assert 'href="/api/ui/jobs?code=alice-key-0123"' in html
    assert 'src="/api/ui/static/app.js?code=alice-key-0123"' in html
    assert ask(dashboard, "static/app.js", "alice-key-0123").status_code == 200


def test_the_master_key_sees_every_owner_s_jobs(dashboard: object, home: Home) -> None:
    html = ask(dashboard, "jobs", "master-key-0123").get_body().decode()

    assert home.alice_job.id in html and home.bob_job.id in html


def test_a_post_without_the_csrf_value_is_refused(dashboard: object, home: Home) -> None:
    refused = ask(dashboard, f"jobs/{home.alice_job.id}/cancel", "alice-key-0123", "POST", b"")

    assert refused.status_code == 403


def test_a_promote_through_the_function_app_takes_the_csrf_cookie_it_set(
    dashboard: object, home: Home
) -> None:
    models = ask(dashboard, "models", "master-key-0123")
    cookie = models.headers["Set-Cookie"]
    assert cookie.startswith("eph_csrf=") and "Path=/api/ui" in cookie
    value = cookie.split(";")[0].removeprefix("eph_csrf=")
    form = f"name=tiny&version=1&alias=azure&csrf={value}".encode()
    headers = {"Cookie": f"eph_csrf={value}", "Content-Type": "application/x-www-form-urlencoded"}

    done = ask(dashboard, "models/promote", "master-key-0123", "POST", form, headers)

    assert done.status_code == 303
    promoted = "promoted=tiny%40azure+-%3E+version+1"
    assert done.headers["Location"] == f"/api/ui/models?{promoted}&code=master-key-0123"
    assert home.service.models.aliases("tiny")["azure"] == 1


def principal_request(path: str, principal: dict[str, object]) -> func.HttpRequest:
    encoded = base64.b64encode(json.dumps(principal).encode()).decode()
    headers = {"x-ms-client-principal-id": "0000-aaaa", "x-ms-client-principal": encoded}
    url = f"http://localhost/api/ui/{path}"
    return func.HttpRequest("GET", url, headers=headers, route_params={"path": path}, body=b"")


def test_behind_app_service_authentication_the_principal_is_the_caller(
    home: Home, tmp_path: Path
) -> None:
    rules = Rules.parse("rules: []\n", base=tmp_path)
    route = route_of(Handlers(home.service, rules, trust_principal=True))
    admin_role = {"claims": [{"typ": "roles", "val": "ephemerid.admin"}]}

    plain = route(principal_request("jobs", {"claims": []})).get_body().decode()
    admin = route(principal_request("jobs", admin_role)).get_body().decode()

    assert "entra:0000-aaaa" in plain and home.alice_job.id not in plain
    assert "entra:0000-aaaa (admin)" in admin and home.bob_job.id in admin
