"""Names of containers, run files and settings, in one place."""

from __future__ import annotations

INCOMING = "incoming"
RUNS = "runs"
MODELS = "models"
CONTAINERS = (INCOMING, RUNS, MODELS)
JOBS_TABLE = "jobs"
JOBS_QUEUE = "jobs"  # the queue the job messages go through (EPHEMERID_JOBS_QUEUE)

# Files under runs/<job>/ ; result.json is written last and is itself the completion event.
JOB_FILE = "job.json"
CODE_DIR = "code"
# Code snapshots, by content: runs/_code/<sha256>/ (written once, shared by every job that ran
# that exact code) and runs/_code/<sha256>.json, the manifest written after the files.
CODE_SNAPSHOTS = "_code"
LOG_FILE = "output.log"
HEARTBEAT_FILE = "heartbeat.json"
METRICS_FILE = "metrics.jsonl"
OUTPUTS_DIR = "outputs"
CHECKPOINT_DIR = "checkpoint"
RESULT_FILE = "result.json"
OUTPUTS_FILE = "outputs.json"  # every output key; result.json and the record list the first

# Environment the runner gives the user's code.
ENV_INPUT_DIR = "EPHEMERID_INPUT_DIR"
ENV_OUTPUT_DIR = "EPHEMERID_OUTPUT_DIR"
ENV_CHECKPOINT_DIR = "EPHEMERID_CHECKPOINT_DIR"
ENV_MODEL_DIR = "EPHEMERID_MODEL_DIR"
ENV_PARAMS = "EPHEMERID_PARAMS"
ENV_METRICS = "EPHEMERID_METRICS_FILE"
ENV_JOB_ID = "EPHEMERID_JOB_ID"


def log_file(rank: int = 0) -> str:
    """The job log of one rank: rank 0's is the job's log, every other rank keeps its own."""
    return LOG_FILE if rank == 0 else f"output.rank-{rank}.log"


def run_key(job_id: str, name: str = "") -> str:
    return f"{RUNS}/{job_id}/{name}" if name else f"{RUNS}/{job_id}"


def code_key(digest: str) -> str:
    return f"{RUNS}/{CODE_SNAPSHOTS}/{digest}"


def job_of_result(key: str) -> str | None:
    """The job id if ``key`` is ``runs/<job>/result.json``."""
    parts = key.split("/")
    if len(parts) == 3 and parts[0] == RUNS and parts[2] == RESULT_FILE:
        return parts[1]
    return None


def model_key(name: str, version: int | None = None) -> str:
    return f"{MODELS}/{name}/{version}" if version is not None else f"{MODELS}/{name}"
