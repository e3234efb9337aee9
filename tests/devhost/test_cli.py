"""`eph dev` as a user runs it: the wiring on stdout, functions served until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import azure.functions as func

from drive import json_document
from ephemerid.functions import handlers_from_settings, register

EPH = Path(sys.executable).with_name("eph")


def test_eph_dev_prints_its_wiring_serves_the_functions_and_stops_on_ctrl_c(
    project: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPHEMERID_")}
    env.update(EPHEMERID_RULES=str(project / "ephemerid.yaml"), NO_COLOR="1", COLUMNS="200")
    command = [str(EPH), "dev", "--json", "--port", "0", "--home", str(tmp_path / "home")]
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as dev:
        try:
            assert dev.stdout is not None
            shown = json_document(dev.stdout)
            request = urllib.request.Request(
                f"{shown['url']}/api/jobs", headers={"x-functions-key": shown["function_key"]}
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                listed = json.loads(answer.read())
        finally:
            dev.send_signal(signal.SIGINT)
            _, stderr = dev.communicate(timeout=30)

    assert dev.returncode == 0, stderr
    assert listed == []
    assert {w["function"]: w["source"] for w in shown["functions"]}["on_blob_created"] == "bucket"
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    register(app, handlers_from_settings)
    wired = sorted(w["function"] for w in shown["functions"])
    assert wired == sorted(f.get_function_name() for f in app.get_functions())
    assert "stopped" in stderr
