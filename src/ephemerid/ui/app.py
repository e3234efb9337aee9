"""The dashboard as a Starlette app: the same pages for `eph ui` and the function app.

``dashboard(service, gate, base)`` builds it. Every request passes the gate first (401 without
a token or key), every page reads through the service (``ephemerid.ui.views``), and the two
mutations, cancel and promote, are POSTs with the CSRF value (403 without it). Our errors map
to pages: 400 bad input (a malformed filter), 404 unknown (or another owner's), 409 conflict.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route

from ephemerid.errors import BadInput, Conflict, EphemeridError, NotFound, Unavailable
from ephemerid.functions.callers import Caller
from ephemerid.service import Service
from ephemerid.spec import ModelRef
from ephemerid.ui import costpage, views
from ephemerid.ui.auth import (
    CSRF_COOKIE,
    CSRF_FIELD,
    TOKEN_COOKIE,
    TOKEN_PARAM,
    Gate,
    csrf_of,
    csrf_ok,
)
from ephemerid.ui.render import Links, page

STATIC = Path(__file__).parent / "static"
MAX_FORM = 64 * 1024
_STATUS = ((NotFound, 404), (BadInput, 400), (Conflict, 409), (Unavailable, 503))


@dataclass(frozen=True)
class Ask:
    """One request as a page sees it: who asks, the query, the form, how to link and post."""

    request: Request
    caller: Caller
    links: Links
    csrf: str
    form: dict[str, str]

    @property
    def query(self) -> dict[str, str]:
        return dict(self.request.query_params)

    def html(self, template: str, code: int = 200, **context: object) -> HTMLResponse:
        body = page(template, self.links, self.csrf, caller=self.caller, **context)
        return HTMLResponse(body, code)

    def back(self, path: str, **query: str) -> RedirectResponse:
        return RedirectResponse(self.links.url(path, query), 303)


Handler = Callable[[Ask], Response]


class Dashboard:
    def __init__(self, service: Service, gate: Gate, base: str = "") -> None:
        self.service = service
        self.gate = gate
        self.base = base.rstrip("/")

    # -- the pages ---------------------------------------------------------------------------

    def jobs(self, ask: Ask) -> Response:
        wanted = views.JobFilter.parse(ask.query)
        rows = views.job_rows(self.service, ask.caller, wanted)
        return ask.html("jobs.html", rows=rows, wanted=wanted, states=views.JobState)

    def job_rows(self, ask: Ask) -> Response:
        wanted = views.JobFilter.parse(ask.query)
        rows = views.job_rows(self.service, ask.caller, wanted)
        return ask.html("job_rows.html", rows=rows)

    def job(self, ask: Ask) -> Response:
        shown = views.job_page(self.service, ask.caller, ask.request.path_params["id"])
        return ask.html("job.html", shown=shown, job=shown.row.job)

    def live(self, ask: Ask) -> Response:
        raw = ask.query.get("offset", "0")
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 18):
            raise BadInput(f"offset must be a whole number (0-9), got '{raw:.40}'")
        job_id = ask.request.path_params["id"]
        return JSONResponse(views.live(self.service, ask.caller, job_id, int(raw)))

    def output(self, ask: Ask) -> Response:
        params = ask.request.path_params
        found = views.output_of(self.service, ask.caller, params["id"], params["name"])
        artifacts = self.service.artifacts

        def chunks() -> Iterator[bytes]:
            with artifacts.open_read(found.key) as stream:
                while chunk := stream.read(1024 * 1024):
                    yield chunk

        filename = found.name.rsplit("/", 1)[-1].replace('"', "")
        headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
        return StreamingResponse(chunks(), media_type="application/octet-stream", headers=headers)

    def cancel(self, ask: Ask) -> Response:
        job = views.visible(self.service, ask.caller, ask.request.path_params["id"])
        self.service.cancel(job.id, f"cancelled from the dashboard by {ask.caller.name}")
        return ask.back(f"/jobs/{job.id}")

    def sweeps(self, ask: Ask) -> Response:
        return ask.html("sweeps.html", sweeps=views.sweeps(self.service, ask.caller))

    def sweep(self, ask: Ask) -> Response:
        sort = ask.query.get("sort", "")
        desc = ask.query.get("desc", "") in ("1", "true")
        shown = views.sweep_page(
            self.service, ask.caller, ask.request.path_params["id"], sort, desc
        )
        return ask.html("sweep.html", sweep=shown, sort=sort, desc=desc)

    def models(self, ask: Ask, error: str = "", status: int = 200) -> Response:
        found = views.models(self.service, ask.caller)
        done = ask.query.get("promoted", "")
        return ask.html("models.html", status, models=found, error=error, promoted=done)

    def promote(self, ask: Ask) -> Response:
        name, alias = ask.form.get("name", ""), ask.form.get("alias", "").strip()
        raw = ask.form.get("version", "")
        try:
            ref = ModelRef.parse(f"{name}:{raw}")
            if ref.version is None:
                raise ValueError(f"version '{raw}' is not a whole number")
            if not ask.caller.admin:
                self._owns_version(ask.caller, ref.name, ref.version)
            version = self.service.models.promote(ref.name, ref.version, alias)
        except ValueError as exc:
            return self.models(ask, f"promote {name}:{raw} as '{alias}': {exc}", 400)
        except EphemeridError as exc:
            status = next((s for kind, s in _STATUS if isinstance(exc, kind)), 500)
            return self.models(ask, f"promote {name}:{raw} as '{alias}': {exc}", status)
        return ask.back("/models", promoted=f"{version.name}@{alias} -> version {version.version}")

    def _owns_version(self, caller: Caller, name: str, number: int) -> None:
        """A caller who is no admin promotes only versions its own jobs made."""
        for version in self.service.models.versions(name):
            if version.version == number and not views.sees_job(
                self.service, caller, version.job_id
            ):
                raise NotFound(f"model '{name}' version {number} was made by another's job")

    def compute(self, ask: Ask) -> Response:
        return ask.html("compute.html", now=views.compute_now(self.service, ask.caller))

    def cost(self, ask: Ask) -> Response:
        wanted = costpage.CostQuery.parse(ask.query)
        shown = costpage.cost_page(self.service, ask.caller, wanted)
        return ask.html("cost.html", shown=shown, found=shown.report, wanted=wanted)

    def rejected(self, ask: Ask) -> Response:
        return ask.html("rejected.html", refusals=views.rejected(self.service, ask.caller))

    def static(self, ask: Ask) -> Response:
        target = (STATIC / ask.request.path_params["name"]).resolve()
        if not target.is_relative_to(STATIC.resolve()) or not target.is_file():
            raise NotFound(f"no static file '{ask.request.path_params['name']}'")
        return FileResponse(target, headers={"Cache-Control": "max-age=300"})

    # -- the gate, the CSRF check, the errors -------------------------------------------------

    def endpoint(self, handler: Handler, post: bool = False) -> Callable[..., Awaitable[Response]]:
        async def answer(request: Request) -> Response:
            caller = self.gate.caller_of(request)
            if caller is None:
                return self._refused(request)
            if self.gate.entering(request):
                return self._enter(request)
            csrf, new = csrf_of(request)
            links = Links(
                self.base,
                {k: request.query_params[k] for k in self.gate.keep if k in request.query_params},
            )
            form: dict[str, str] = {}
            if post:
                body = await request.body()
                form = dict(parse_qsl(body[:MAX_FORM].decode("utf-8", "replace")))
                if not csrf_ok(request, form.get(CSRF_FIELD, "")):
                    ask = Ask(request, caller, links, csrf, form)
                    return ask.html(
                        "error.html",
                        403,
                        status=403,
                        message="this form's CSRF token is missing or stale: reload the page "
                        "and submit it again",
                    )
            ask = Ask(request, caller, links, csrf, form)
            response = await run_in_threadpool(self._guarded, handler, ask)
            if new:
                response.set_cookie(
                    CSRF_COOKIE, csrf, httponly=True, samesite="strict", path=self.base or "/"
                )
            return response

        return answer

    def _guarded(self, handler: Handler, ask: Ask) -> Response:
        try:
            return handler(ask)
        except EphemeridError as exc:
            status = next((s for kind, s in _STATUS if isinstance(exc, kind)), 500)
            if ask.request.url.path.endswith(".json"):
                return JSONResponse({"error": str(exc)}, status)
            return ask.html("error.html", status, status=status, message=str(exc))

    def _refused(self, request: Request) -> Response:
        return HTMLResponse(
            "<!doctype html><title>401</title><h1>401: who are you?</h1><p>Open the address "
            "<code>eph ui</code> printed (it carries <code>?token=</code>), or send the "
            "function key.</p>",
            401,
        )

    def _enter(self, request: Request) -> Response:
        rest = [(k, v) for k, v in request.query_params.multi_items() if k != TOKEN_PARAM]
        target = request.url.path + (f"?{urlencode(rest)}" if rest else "")
        response = RedirectResponse(target, 303)
        token = request.query_params[TOKEN_PARAM]
        response.set_cookie(
            TOKEN_COOKIE, token, httponly=True, samesite="strict", path=self.base or "/"
        )
        return response

    def routes(self) -> list[Route]:
        get = self.endpoint
        table: list[tuple[str, Handler, bool]] = [
            ("/", lambda ask: ask.back("/jobs"), False),
            ("/jobs", self.jobs, False),
            ("/jobs/rows", self.job_rows, False),
            ("/jobs/{id}", self.job, False),
            ("/jobs/{id}/live.json", self.live, False),
            ("/jobs/{id}/outputs/{name:path}", self.output, False),
            ("/jobs/{id}/cancel", self.cancel, True),
            ("/sweeps", self.sweeps, False),
            ("/sweeps/{id}", self.sweep, False),
            ("/models", self.models, False),
            ("/models/promote", self.promote, True),
            ("/compute", self.compute, False),
            ("/cost", self.cost, False),
            ("/rejected", self.rejected, False),
            ("/static/{name:path}", self.static, False),
        ]
        return [
            Route(path, get(handler, post), methods=["POST"] if post else ["GET"])
            for path, handler, post in table
        ]


def dashboard(service: Service, gate: Gate, base: str = "") -> Starlette:
    """The dashboard on ``service``, behind ``gate``, at ``base`` ("" or e.g. "/api/ui")."""
    ui = Dashboard(service, gate, base)
    routes = ui.routes()

    async def unknown(request: Request, exc: Exception) -> Response:
        """No such page: 401 to a stranger (nothing is told before the gate), else a 404 page."""
        if gate.caller_of(request) is None:
            return ui._refused(request)
        return HTMLResponse(
            f"<!doctype html><title>404</title><h1>404</h1><p>No page here: "
            f'<a href="{ui.base}/jobs">the jobs</a>.</p>',
            404,
        )

    return Starlette(
        routes=[Mount(ui.base, routes=routes)] if ui.base else routes,
        exception_handlers={404: unknown},
    )
