"""A VM's metadata service and a container registry on loopback, and a ``docker`` stand-in.

A real HTTP server plays IMDS's token route and the registry's ``/oauth2/exchange``, as Azure
answers them; ``docker_on_path`` writes a ``docker`` program that records each call (arguments,
standard input, uid) and, for ``run``, runs the command after the image as the container would.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

AAD_TOKEN = "aad-token-of-the-vm-identity"
REFRESH_TOKEN = "acr-refresh-token-never-shown"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
DOCKER = r"""#!/usr/bin/env python3
import json, os, subprocess, sys
args = sys.argv[1:]
stdin = sys.stdin.read()
with open(LOG, "a") as log:
    log.write(json.dumps({"argv": args, "stdin": stdin, "uid": os.getuid()}) + "\n")
verb = args[2] if args[0] == "--config" else args[0]
if verb == "run":
    image = IMAGE
    command = args[args.index(image) + 1 :]
    command[0] = sys.executable  # the image's python
    sys.exit(subprocess.call(command))
print(f"docker {verb}: done")
"""


class Azure(BaseHTTPRequestHandler):
    """IMDS's token route and the registry's exchange, as Azure answers them."""

    seen: list[dict[str, Any]]
    refuse = False

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        self.seen.append(
            {
                "path": url.path,
                "query": dict(urllib.parse.parse_qsl(url.query)),
                "metadata": self.headers.get("Metadata"),
            }
        )
        self._answer(200, {"access_token": AAD_TOKEN, "token_type": "Bearer"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        form = dict(urllib.parse.parse_qsl(self.rfile.read(length).decode()))
        self.seen.append({"path": self.path, "form": form})
        if self.refuse:
            self._answer(401, {"errors": [{"code": "UNAUTHORIZED", "message": "denied"}]})
        else:
            self._answer(200, {"refresh_token": REFRESH_TOKEN})

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def docker_on_path(bin_dir: Path, log: Path, image: str) -> None:
    """The ``docker`` stand-in, in ``bin_dir``, recording its calls in ``log``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = DOCKER.replace("LOG", repr(str(log))).replace("IMAGE", repr(image))
    (bin_dir / "docker").write_text(script)
    (bin_dir / "docker").chmod(0o755)


@contextmanager
def serve() -> Iterator[type[Azure]]:
    handler = type("Handler", (Azure,), {"seen": [], "refuse": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    handler.port = server.server_address[1]  # type: ignore[attr-defined]
    yield handler
    server.shutdown()
    server.server_close()
