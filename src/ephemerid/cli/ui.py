"""`eph ui`: the web dashboard on this machine, on loopback, behind a token in its URL."""

from __future__ import annotations

import getpass
import ipaddress
import socket
from typing import Annotated

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ephemerid.cli.options import Home, console, service_for
from ephemerid.cli.render import dump
from ephemerid.errors import BadInput, require_extra


class UiOptions(BaseModel):
    """Where `eph ui` listens: a port (0: a free one) on an address of this machine."""

    model_config = ConfigDict(frozen=True)

    host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    port: int = Field(default=0, ge=0, le=65535)
    owner: str = Field(default="", max_length=200)

    @classmethod
    def of(cls, **given: object) -> UiOptions:
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            problems = "; ".join(f"--{e['loc'][0]}: {e['msg']}" for e in exc.errors())
            raise BadInput(f"eph ui: {problems}") from exc

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


def ui(
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 0,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    owner: Annotated[
        str,
        typer.Option(help="Show only this owner's jobs (e.g. key:alice); default: all (admin)."),
    ] = "",
    home: Home = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print the URL as JSON to stdout, then keep serving.")
    ] = False,
) -> None:
    """Serve the web dashboard: jobs, logs and metric curves live, sweeps, models, compute.

    The printed URL carries a random token; the browser keeps it as a cookie. A request without
    it gets 401. Ctrl-C stops it.
    """
    for module in ("starlette", "uvicorn", "jinja2", "azure.functions"):
        require_extra(module, "ui")
    import uvicorn

    from ephemerid.functions.callers import Caller
    from ephemerid.ui.app import dashboard
    from ephemerid.ui.auth import TokenGate, new_token

    options = UiOptions.of(host=host, port=port, owner=owner)
    service = service_for(home)
    caller = Caller(owner, admin=False) if owner else Caller(f"cli:{getpass.getuser()}", True)
    token = new_token()
    try:
        listener = socket.create_server((options.host, options.port))
    except OSError as exc:
        raise BadInput(f"eph ui: cannot listen on {options.host}:{options.port} ({exc})") from exc
    bound = listener.getsockname()[1]
    shown = f"[{options.host}]" if ":" in options.host else options.host
    url = f"http://{shown}:{bound}/?token={token}"
    if json_:
        dump({"url": url, "host": options.host, "port": bound, "owner": caller.name})
    console.print(f"dashboard: {url}")
    console.print(
        f"showing {'all jobs' if caller.admin else caller.name + ' jobs only'}; Ctrl-C stops it"
    )
    if not options.loopback:
        console.print(f"[yellow]warning:[/] {options.host} is not loopback: plain HTTP")
    app = dashboard(service, TokenGate(token, caller))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
        service.close()
        console.print("stopped")
