"""The Azure Functions adapters: ``register`` puts ephemerid's functions on a FunctionApp.

``function_app.py`` at the app root builds nothing itself: it calls ``register`` with a factory,
and the services are built once, on first use, from the app settings. Binding names that vary
by deployment are app settings (``%NAME%``); ``APP_SETTING_DEFAULTS`` gives their local values.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import azure.functions as func

from ephemerid.app import build_service, load_rules
from ephemerid.azure.container_app import ContainerAppDeployer, ContainerAppSettings
from ephemerid.azure.follow import AliasFollower
from ephemerid.functions.callers import KEYS_FILE_SETTING, Caller, trusts_principal
from ephemerid.functions.handlers import Handlers
from ephemerid.functions.serving import http_serving_deploy
from ephemerid.names import INCOMING, JOBS_QUEUE, RESULT_FILE, RUNS
from ephemerid.settings import Settings

STORAGE_CONNECTION = "EPHEMERID_STORAGE"
SERVICEBUS_CONNECTION = "EPHEMERID_SERVICEBUS"
TICK_SCHEDULE = "0 * * * * *"  # every minute, on the minute (NCRONTAB, 6 fields)

HttpHandler = Callable[[Handlers, func.HttpRequest], func.HttpResponse]

APP_SETTING_DEFAULTS = {
    "EPHEMERID_INCOMING_CONTAINER": INCOMING,
    "EPHEMERID_RUNS_CONTAINER": RUNS,
    "EPHEMERID_JOBS_QUEUE": JOBS_QUEUE,
}


@functools.cache
def handlers_from_settings() -> Handlers:
    settings = Settings.from_env()
    service = build_service(settings)
    serving = ContainerAppSettings.from_env(os.environ)
    deployer = functools.partial(ContainerAppDeployer.from_settings, serving)
    followed = serving.followed()
    if followed is not None:  # a job promoting under this alias redeploys the service
        service.subscribe(AliasFollower(service.models, followed, deployer))
    return Handlers(
        service,
        load_rules(settings),
        jobs_queue=settings.jobs_queue,
        keys_file=os.environ.get(KEYS_FILE_SETTING),
        trust_principal=trusts_principal(os.environ),
        keyless=Caller("key:none"),  # never let through by the host: every route needs a key
        serving=deployer,
    )


def register(app: func.FunctionApp, handlers: Callable[[], Handlers]) -> None:
    """Register every ephemerid function on ``app``; ``handlers`` is called on each event."""

    @app.function_name("on_blob_created")
    @app.blob_trigger(
        arg_name="blob",
        path="%EPHEMERID_INCOMING_CONTAINER%/{name}",
        connection=STORAGE_CONNECTION,
        source=func.BlobSource.EVENT_GRID,
    )
    def on_blob_created(blob: func.InputStream) -> None:
        handlers().blob_created(blob)

    @app.function_name("on_run_result")
    @app.blob_trigger(
        arg_name="blob",
        path=f"%EPHEMERID_RUNS_CONTAINER%/{{job}}/{RESULT_FILE}",
        connection=STORAGE_CONNECTION,
        source=func.BlobSource.EVENT_GRID,
    )
    def on_run_result(blob: func.InputStream) -> None:
        handlers().run_result(blob)

    @app.function_name("on_job_message")
    @app.service_bus_queue_trigger(
        arg_name="message", queue_name="%EPHEMERID_JOBS_QUEUE%", connection=SERVICEBUS_CONNECTION
    )
    def on_job_message(message: func.ServiceBusMessage) -> None:
        handlers().job_message(message)

    @app.function_name("on_job_queue_message")
    @app.queue_trigger(
        arg_name="message", queue_name="%EPHEMERID_JOBS_QUEUE%", connection=STORAGE_CONNECTION
    )
    def on_job_queue_message(message: func.QueueMessage) -> None:
        handlers().job_queue_message(message)

    @app.function_name("tick")
    @app.timer_trigger(arg_name="timer", schedule=TICK_SCHEDULE, run_on_startup=False)
    def tick(timer: func.TimerRequest) -> None:
        handlers().tick(timer)

    routes: list[
        tuple[str, str, str, Callable[[Handlers, func.HttpRequest], func.HttpResponse]]
    ] = [
        ("submit_job", "jobs", "POST", Handlers.http_submit),
        ("list_jobs", "jobs", "GET", Handlers.http_list),
        ("get_job", "jobs/{id}", "GET", Handlers.http_get),
        ("cancel_job", "jobs/{id}/cancel", "POST", Handlers.http_cancel),
        ("job_logs", "jobs/{id}/logs", "GET", Handlers.http_logs),
        ("list_rejected", "rejected", "GET", Handlers.http_rejected),
    ]
    for name, route, method, handler in routes:
        _route(app, handlers, name, route, method, handler)
    # the master key only (the host checks it; the handler checks the caller is the admin too)
    _route(
        app, handlers, "serving_deploy", "serving/deploy", "POST", http_serving_deploy,
        func.AuthLevel.ADMIN,
    )  # fmt: skip
    _dashboard_route(app, handlers)


def _dashboard_route(app: func.FunctionApp, handlers: Callable[[], Handlers]) -> None:
    """The web dashboard's pages at /api/ui/... (ephemerid.ui.azure), behind the function key."""
    from ephemerid.ui import azure as ui

    def dashboard(req: func.HttpRequest) -> func.HttpResponse:
        return ui.serve(handlers(), req)

    app.function_name("dashboard")(
        app.route(route=ui.ROUTE, methods=["GET", "POST"], auth_level=func.AuthLevel.FUNCTION)(
            dashboard
        )
    )


def _route(
    app: func.FunctionApp,
    handlers: Callable[[], Handlers],
    name: str,
    route: str,
    method: str,
    handler: HttpHandler,
    auth_level: func.AuthLevel = func.AuthLevel.FUNCTION,
) -> None:
    def http(req: func.HttpRequest) -> func.HttpResponse:
        return handler(handlers(), req)

    http.__name__ = name
    app.function_name(name)(app.route(route=route, methods=[method], auth_level=auth_level)(http))
