"""The dashboard's HTML: Jinja2 templates shipped in the package, every value escaped.

Autoescape is on for every template and string, so whatever a job record holds (a reason, a
param, a log line) reaches the page as text, never as markup. Links go through ``Links.url``,
which puts the app's base path in front (``/api/ui`` in the function app) and carries the query
parameters the gate keeps (a function key's ``code``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

ENV = Environment(
    loader=PackageLoader("ephemerid.ui", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.1f}m"
    return f"{value / 3600:.1f}h"


def usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def when(value: datetime | str | None) -> str:
    if value is None or value == "":
        return "-"
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at.strftime("%Y-%m-%d %H:%M:%S UTC")


def number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def as_json(value: Any) -> Markup:
    """``value`` as JSON safe inside a ``<script type="application/json">`` element."""
    text = json.dumps(value, default=str)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)  # noqa: S704 (escaped above: no '<', '>' or '&' is left)


ENV.filters.update(seconds=seconds, usd=usd, when=when, number=number, as_json=as_json)


@dataclass(frozen=True)
class Links:
    base: str  # the app's path prefix, "" or e.g. "/api/ui"
    kept: dict[str, str]  # query parameters every link carries (a function key's ``code``)

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        given = {k: str(v) for k, v in (query or {}).items() if v is not None and v != ""}
        merged = {**given, **self.kept}
        target = self.base + quote(path, safe="/:@-._~")
        return f"{target}?{urlencode(merged)}" if merged else target


def page(template: str, links: Links, csrf: str, **context: Any) -> str:
    return ENV.get_template(template).render(
        url=links.url,
        csrf=csrf,
        keep=urlencode(links.kept),
        kept=links.kept,
        base=links.base,
        **context,
    )
