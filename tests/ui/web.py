"""A dashboard served for real on loopback (uvicorn in a thread), and a small HTTP client for it
that keeps cookies as a browser does: what the HTTP-level tests and the browser tests share."""

from __future__ import annotations

import http.client
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urlsplit

import uvicorn
from starlette.applications import Starlette

from drive import wait_for


@contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """``app`` on a free loopback port for the block; its base URL (``http://127.0.0.1:N``)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, "the dashboard's server to start", timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)
        listener.close()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def cookies(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]

    @property
    def csrf(self) -> str:
        found = re.search(r'name="csrf" value="([^"]+)"', self.text)
        assert found, "the page has no form with a CSRF value"
        return found.group(1)


@dataclass
class Web:
    """An HTTP client with a cookie jar, redirects followed like a browser's (303: GET)."""

    base: str
    jar: dict[str, str] = field(default_factory=dict)

    def get(self, path: str, follow: bool = True) -> Reply:
        return self.send("GET", path, follow=follow)

    def post(self, path: str, form: dict[str, str], follow: bool = True) -> Reply:
        return self.send("POST", path, urlencode(form).encode(), follow)

    def send(self, method: str, path: str, body: bytes = b"", follow: bool = True) -> Reply:
        for _ in range(5):
            reply = self._once(method, path, body)
            location = reply.header("location")
            if not (follow and reply.status in (301, 302, 303, 307) and location):
                return reply
            method, body, path = "GET", b"", location
        raise AssertionError(f"too many redirects from {path}")

    def _once(self, method: str, path: str, body: bytes) -> Reply:
        url = urlsplit(self.base)
        conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=60)
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if body else {}
        if self.jar:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.jar.items())
        try:
            conn.request(method, path, body=body or None, headers=headers)
            response = conn.getresponse()
            reply = Reply(response.status, response.getheaders(), response.read())
        finally:
            conn.close()
        for raw in reply.cookies():
            for name, morsel in SimpleCookie(raw).items():
                self.jar[name] = morsel.value
        return reply
