"""User code that tries to swamp ephemerid: its harm stays inside its own job.

Real local compute through the service: a script that floods its log, one that writes tens of
thousands of outputs. (A script that forks a setsid daemon: tests/reliability/test_local_compute.py;
one that links outside its folder: tests/reliability/test_inputs.py.)
"""

from __future__ import annotations

import re
from pathlib import Path

from drive import Gate, finish, log_of, service_with, spec_for, wait_for, write_script
from ephemerid import names
from ephemerid.artifacts import get_bytes
from ephemerid.contract import OUTPUTS_LISTED, Outputs
from ephemerid.record import ComputeState, JobState
from ephemerid.settings import Settings

LOG_LIMIT = 1024 * 1024
FLOOD_NOTE = re.compile(r"log truncated at (\d+) bytes; (\d+) more bytes were not kept")
# Writes as fast as it can: 100 MB, says so, then on until told to stop or 1 GB is written.
FLOOD = """
import json, os, pathlib, sys

gate = pathlib.Path(json.loads(pathlib.Path(os.environ["EPHEMERID_PARAMS"]).read_text())["gate"])
block = (b"y" * 1023 + b"\\n") * 1024
for n in range(1024):
    sys.stdout.buffer.write(block)
    if n == 100:
        (gate / "flooded").touch()
    if n > 100 and (gate / "stop").exists():
        break
"""
# Small files in folders of 1,000. 100,000 took 76 s on the loaded 2-core machine this was
# written on, 50,000 took 57 s: 40,000 keeps the test within the suite's budget, and is still
# far past what a record could list.
OUTPUT_COUNT = 40_000
MANY_FILES = f"""
import os, pathlib

out = pathlib.Path(os.environ["EPHEMERID_OUTPUT_DIR"])
for shard in range({OUTPUT_COUNT} // 1000):
    folder = out / f"part-{{shard:03}}"
    folder.mkdir()
    for n in range(1000):
        (folder / f"{{n:04}}.txt").write_bytes(b"x")
"""


def test_a_job_flooding_its_log_is_cut_at_the_limit_while_the_service_answers_and_it_ends(
    settings: Settings, code_dir: Path, tmp_path: Path
) -> None:
    gate = Gate(tmp_path / "gate")
    write_script(code_dir, FLOOD)
    spec = spec_for(code_dir, params=gate.params, compute={"max_runtime": "5m"})

    with service_with(settings, log_limit_bytes=LOG_LIMIT) as service:
        job = service.submit(spec).job
        log_key = names.run_key(job.id, names.LOG_FILE)
        wait_for(lambda: (gate.path / "flooded").exists(), "100 MB of log written", timeout=120)
        during = service.get(job.id)
        stored = wait_for(lambda: service.artifacts.stat(log_key), "the log")
        listed = [j.id for j in service.list()]
        (gate.path / "stop").touch()
        done = finish(service, job.id, timeout=120)
        kept = service.artifacts.stat(log_key)
        log = log_of(service, job.id)

    assert during.state is JobState.RUNNING and job.id in listed
    assert stored.size <= LOG_LIMIT + 200
    assert done.state is JobState.SUCCEEDED, done.reason
    assert done.compute_state is ComputeState.RELEASED
    assert kept is not None and kept.size <= LOG_LIMIT + 200
    note = FLOOD_NOTE.search(log)
    assert note, log[-300:]
    assert int(note.group(1)) == LOG_LIMIT
    assert int(note.group(2)) >= 100 * 1024 * 1024 - LOG_LIMIT


def test_a_job_writing_tens_of_thousands_of_outputs_succeeds_with_a_small_record(
    settings: Settings, code_dir: Path
) -> None:
    write_script(code_dir, MANY_FILES)

    with service_with(settings) as service:
        job = finish(service, service.submit(spec_for(code_dir)).job.id, timeout=300)
        key = names.run_key(job.id, names.OUTPUTS_FILE)
        manifest = Outputs.loads(get_bytes(service.artifacts, key), where=key)
        reread = service.get(job.id)

    assert job.state is JobState.SUCCEEDED, job.reason
    assert (job.output_count, job.output_bytes) == (OUTPUT_COUNT, OUTPUT_COUNT)
    assert len(job.outputs) == OUTPUTS_LISTED
    assert reread == job
    outputs = names.run_key(job.id, names.OUTPUTS_DIR)
    shards = range(OUTPUT_COUNT // 1000)
    expected = {f"{outputs}/part-{s:03}/{n:04}.txt" for s in shards for n in range(1000)}
    assert set(manifest.outputs) == expected and len(manifest.outputs) == OUTPUT_COUNT
    assert set(job.outputs) <= expected
