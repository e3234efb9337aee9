"""The agent's loop, run in this process: a dropped blob becomes a job that runs to its end."""

from __future__ import annotations

import threading
from pathlib import Path

from drive import wait_for, write_script
from ephemerid.agent import Agent
from ephemerid.app import build_service
from ephemerid.artifacts import put_bytes
from ephemerid.settings import Settings

RULES = """
rules:
  - name: train-on-drop
    blob: incoming/train/{name}.csv
    job: {kind: train, code: code, entrypoint: job.py, inputs: {data: "{uri}"}}
"""


def test_a_blob_dropped_in_incoming_becomes_a_job_that_the_agent_runs_to_its_end(
    settings: Settings, code_dir: Path
) -> None:
    settings.rules_path.write_text(RULES)
    write_script(code_dir, "print('trained on the drop')\n")
    agent = Agent(settings)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    service = build_service(settings)
    try:
        put_bytes(service.artifacts, "incoming/train/customers.csv", b"a,b\n1,2\n")
        [job] = wait_for(service.list, "a job made from the dropped blob", timeout=60)
        done = wait_for(
            lambda: (
                (j := service.get(job.id)).state.terminal
                and j.compute_state.value == "released"
                and j
            ),
            "the agent to finish the job",
            timeout=60,
        )
    finally:
        agent.stop()
        thread.join(timeout=30)
        service.close()

    assert done.state.value == "SUCCEEDED"
    assert done.source == "blob incoming/train/customers.csv (rule train-on-drop)"
    assert not thread.is_alive()
