"""The dashboard in the function app: one HTTP route, ``/api/ui/{*path}``, GET and POST.

The Functions host lets a request in only with a function key (``?code=`` or
``x-functions-key``) or, behind App Service authentication, a signed-in principal; the caller
is the one ``functions.callers`` names, and the pages show only what it may see (all of it for
the master key or the ``ephemerid.admin`` role). The same Starlette app as `eph ui` answers,
through the Functions ASGI adapter, built per request around that caller.
"""

from __future__ import annotations

import json

import azure.functions as func

from ephemerid.functions.handlers import Handlers

ROUTE = "ui/{*path}"
BASE = "/api/ui"  # the host's route prefix (host.json's default "api") and the route


def serve(handlers: Handlers, req: func.HttpRequest) -> func.HttpResponse:
    """Answer one dashboard request for the caller that sent it."""
    try:
        from ephemerid.ui.app import dashboard
        from ephemerid.ui.auth import CallerGate
    except ImportError as exc:  # the app was deployed without the `ui` extra
        body = {"error": f"the dashboard needs pip install 'ephemerid[ui]' ({exc})"}
        return func.HttpResponse(json.dumps(body), status_code=501, mimetype="application/json")
    app = dashboard(handlers.service, CallerGate(handlers.caller(req)), base=BASE)
    response: func.HttpResponse = func.AsgiMiddleware(app).main(req, None)
    return response
