"""A storage outage, at the transport: the real SDK client, a real azure-core pipeline, and under
it a ``requests`` adapter that answers a scripted status (or resets) while the outage lasts.

    outage = Outage()
    store = TableJobStore(connection, table, **outage.client_options())
    outage.answer(503)  # every request now gets 503 Server Busy, as from Azure
    outage.end()        # and now reaches Azurite again

Fake the transport, never the client (STYLE.md 3).
"""

from __future__ import annotations

import io
import json
from http import HTTPStatus
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPResponse
from urllib3.exceptions import ProtocolError


class Outage(HTTPAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.status: int | None = None  # None: pass through; 0: reset the connection
        self.code = ""
        self.failed = 0  # requests answered by the outage

    def answer(self, status: int, code: str = "ServerBusy") -> None:
        self.status, self.code = status, code

    def reset(self) -> None:
        self.status = 0

    def end(self) -> None:
        self.status = None

    def client_options(self) -> dict[str, Any]:
        """What to pass to the SDK client: this transport, and no retries of its own."""
        from azure.core.pipeline.transport import RequestsTransport

        session = requests.Session()
        session.mount("http://", self)
        session.mount("https://", self)
        return {"transport": RequestsTransport(session=session), "retry_total": 0}

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if self.status is None:
            return super().send(request, **kwargs)
        self.failed += 1
        if self.status == 0:
            reset = ConnectionResetError(104, "Connection reset by peer")
            raise requests.ConnectionError(ProtocolError("Connection aborted.", reset))
        phrase = HTTPStatus(self.status).phrase
        if "json" in str(request.headers.get("Accept", "")):  # the table service
            kind = "application/json"
            body = json.dumps({"odata.error": {"code": self.code, "message": {"value": phrase}}})
        else:  # blob and queue
            kind = "application/xml"
            body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{self.code}</Code>'
            body += f"<Message>{phrase}</Message></Error>"
        size = str(len(body))
        headers = {"Content-Type": kind, "x-ms-error-code": self.code, "Content-Length": size}
        raw = HTTPResponse(
            body=io.BytesIO(body.encode()),
            headers=headers,
            status=self.status,
            reason=phrase,
            preload_content=False,
            decode_content=False,
        )
        return self.build_response(request, raw)
