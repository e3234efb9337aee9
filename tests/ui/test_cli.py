"""`eph ui`: it serves the dashboard on loopback and prints the URL with its token."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from drive import json_document
from ui.conftest import Home
from ui.web import Web

EPH = Path(sys.executable).with_name("eph")


def env() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("EPHEMERID_")},
        "NO_COLOR": "1",
    }


def test_eph_ui_serves_the_home_behind_the_token_it_prints(home: Home) -> None:
    command = [str(EPH), "ui", "--port", "0", "--json", "--home", str(home.service.settings.home)]
    with subprocess.Popen(
        command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as ui:
        try:
            assert ui.stdout is not None
            shown = json_document(ui.stdout)
            url = urlsplit(shown["url"])
            assert url.hostname == "127.0.0.1" and url.port == shown["port"]
            assert url.query.startswith("token=") and len(url.query) > 30
            base = f"http://127.0.0.1:{url.port}"
            assert Web(base).get("/jobs").status == 401
            browser = Web(base)
            page = browser.get(f"/?{url.query}")
            assert page.status == 200 and home.alice_job.id in page.text
            assert home.bob_job.id in page.text  # the machine's user is the admin here
        finally:
            ui.send_signal(signal.SIGINT)
            _, err = ui.communicate(timeout=60)
    assert ui.returncode == 0, err
    assert f"dashboard: {shown['url']}" in err


def test_eph_ui_refuses_a_port_out_of_range(home: Home) -> None:
    done = subprocess.run(
        [str(EPH), "ui", "--port", "70000", "--json", "--home", str(home.service.settings.home)],
        env=env(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 2
    assert "--port" in json.loads(done.stdout)["error"]


def test_eph_ui_owner_shows_that_owner_s_jobs_only(home: Home) -> None:
    command = [str(EPH), "ui", "--owner", "key:bob", "--json"]
    command += ["--home", str(home.service.settings.home)]
    with subprocess.Popen(
        command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as ui:
        try:
            assert ui.stdout is not None
            shown = json_document(ui.stdout)
            url = urlsplit(shown["url"])
            page = Web(f"http://127.0.0.1:{url.port}").get(f"/jobs?{url.query}")
            assert shown["owner"] == "key:bob"
            assert home.bob_job.id in page.text and home.alice_job.id not in page.text
        finally:
            ui.send_signal(signal.SIGINT)
            ui.communicate(timeout=60)
