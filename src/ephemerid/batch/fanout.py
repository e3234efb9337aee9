"""Batch prediction fanned out over shards: one predict job becomes N child jobs, each on its own
compute, and ends when they all have, with one merged manifest.

A predict job whose ``batch.shards`` is more than 1 is a parent that rents nothing: its input
files (each input's key, or every file under its prefix) are split into ``shards`` groups of
about equal bytes, in name order, and each group becomes a child predict job (the same spec, the
group as its inputs) whose idempotency key is derived from the parent's and the shard's number,
so a redelivered trigger or a re-run fan-out never makes a second child. There are never more
shards than files. The children are submitted at once and wait for capacity as any job does.

Like a sweep (``ephemerid.sweeps``), the parent is moved on by events: a child's end
(``Service.complete``/``Service.end``) and every reaper pass. Once every child has ended it
succeeds if they all did, else fails naming the shards that did not, and writes
``runs/<parent>/outputs/predictions/manifest.json``: every child's shards in one manifest.
Cancelling the parent cancels its children. On azure-ml each child is its own Azure ML job
(one cluster node each), so the shards scale out on the cluster as on any backend.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ephemerid import transitions
from ephemerid.artifacts import get_bytes, put_bytes
from ephemerid.batch.manifest import MANIFEST_FILE, Manifest, predictions_key
from ephemerid.batch.spec import MAX_SHARDS
from ephemerid.errors import NotFound, SpecError
from ephemerid.parents import Parents
from ephemerid.record import JobRecord, JobState, Submitted, job_id_for, utcnow
from ephemerid.spec import JobSpec

if TYPE_CHECKING:
    pass

log = logging.getLogger("ephemerid.fanout")


def shard_count(spec: JobSpec) -> int:
    """The most shards the spec asks for (1: no fan-out). With ``max_rows_per_job`` it is the
    cap, MAX_SHARDS: how many follows from the inputs' rows, counted at submit."""
    batch = spec.batch
    if batch is not None and batch.max_rows_per_job is not None:
        return MAX_SHARDS
    return batch.shards if batch is not None and batch.shards else 1


def split(files: list[tuple[str, int]], count: int) -> list[list[str]]:
    """``files`` (key, size) into at most ``count`` groups of about equal bytes, each in name
    order: the largest first, each to the lightest group so far (deterministic)."""
    groups: list[list[tuple[str, int]]] = [[] for _ in range(min(count, len(files)))]
    for key, size in sorted(files, key=lambda f: (-f[1], f[0])):
        lightest = min(range(len(groups)), key=lambda g: (sum(s for _, s in groups[g]), g))
        groups[lightest].append((key, size))
    return [sorted(key for key, _ in group) for group in groups]


def pack(files: list[tuple[str, int]], most: int) -> list[list[str]]:
    """``files`` (key, rows), in name order, into consecutive groups of at most ``most`` rows
    each; a file of more rows than that is a group of its own (a file is never split)."""
    groups: list[list[str]] = []
    rows = 0  # the last group's
    for key, count in sorted(files):
        if rows + count > most or not groups:
            groups.append([])
            rows = 0
        groups[-1].append(key)
        rows += count
    return groups


class Fanout(Parents):
    """Mixed into ``Service``, whose steps it uses."""

    def submit_fanout(
        self,
        spec: JobSpec,
        *,
        key: str | None,
        source: str,
        namespace: str | None,
        owner: str,
        admin: bool,
        python: str,
    ) -> Submitted:
        """Accept the parent once per key and submit its shards (checked first: nothing is
        stored or rented for a bad spec)."""

        def build(parent_id: str, key: str) -> JobRecord:
            backend = self._checked_backend(spec)
            plan = self._check_staging(spec, owner, admin)
            groups = self._groups(spec, self._files(plan.inputs))
            if not groups:
                message = "batch.shards: the inputs hold no file to score: add files, or inputs"
                raise SpecError(message)
            return JobRecord(
                id=parent_id,
                key=key,
                spec=spec.without_secrets(),
                source=source,
                owner=owner,
                backend=backend,
                python=python,
                fanout={"shards": groups, "asked": shard_count(spec)},
            )

        keys = (spec.idempotency_key, key, namespace)
        return self._accept_parent(spec.kind.value, keys, build, self.advance_fanout)

    def _groups(self, spec: JobSpec, files: list[tuple[str, int]]) -> list[list[str]]:
        most = spec.batch.max_rows_per_job if spec.batch else None
        if most is None:
            return split(files, shard_count(spec))
        from ephemerid.batch.formats import InputError  # pyarrow: only for these jobs
        from ephemerid.batch.inputs import file_rows

        try:
            groups = pack([(k, file_rows(self.artifacts, k, size)) for k, size in files], most)
        except InputError as exc:
            raise SpecError(str(exc)) from None
        if len(groups) > MAX_SHARDS:
            raise SpecError(
                f"batch.max_rows_per_job: {most} rows a job would make {len(groups)} child "
                f"jobs, more than {MAX_SHARDS}: raise it, or use batch.shards"
            )
        return groups

    def _files(self, inputs: dict[str, str]) -> list[tuple[str, int]]:
        files = []
        for key in inputs.values():
            stat = self.artifacts.stat(key)
            found = [stat] if stat is not None else list(self.artifacts.list(key + "/"))
            files += [(s.key, s.size) for s in found if not s.key.endswith("/")]
        return sorted(set(files))

    def shard_jobs(self, parent_id: str) -> list[JobRecord | None]:
        parent = self.store.get(parent_id)
        count = len((parent.fanout or {}).get("shards", []))
        return [self._known(job_id_for("predict", k), k) for k in _keys(parent, count)]

    def advance_fanout(self, parent_id: str) -> JobRecord:
        """Submit the shards not made yet (none once the parent ended), end those of an ended
        parent, and end the parent once every shard has."""
        parent = self.store.get(parent_id)
        groups: list[list[str]] = (parent.fanout or {}).get("shards", [])
        jobs = self.shard_jobs(parent_id)
        for number, (group, job) in enumerate(zip(groups, jobs, strict=True)):
            if job is None and not parent.state.terminal:
                jobs[number] = self._submit_shard(parent, number, group)
            elif job is not None and parent.state.terminal and not job.state.terminal:
                jobs[number] = self.end(job.id, JobState.CANCELLED, f"its job {parent_id} ended")
        if parent.state is JobState.ACCEPTED:
            self._transition(parent_id, transitions.parent_started)
        if not parent.state.terminal and all(j is not None and j.state.terminal for j in jobs):
            self._finish_fanout(parent_id, [j for j in jobs if j is not None])
        return self.store.get(parent_id)

    def _submit_shard(self, parent: JobRecord, number: int, group: list[str]) -> JobRecord:
        data = parent.spec.model_dump(mode="json", exclude_none=True)
        data["inputs"] = {f"part-{n:05d}": key for n, key in enumerate(group)}
        data["batch"] = {**data.get("batch", {}), "shards": None, "max_rows_per_job": None}
        data["name"] = f"{(parent.spec.name or parent.spec.label)[:50]}-shard-{number}"
        [key] = _keys(parent, number + 1)[number:]
        return self.submit(
            JobSpec.model_validate(data),
            key=key,
            source=f"shards:{parent.id}",
            owner=parent.owner,
            admin=True,  # the parent's submit checked the inputs with its caller's rights
            python=parent.python or None,
            parent=parent.id,
        ).job

    def _finish_fanout(self, parent_id: str, jobs: list[JobRecord]) -> None:
        failed = [j for j in jobs if j.state is not JobState.SUCCEEDED]
        parent = self.store.get(parent_id)
        merged = self._merged(parent, jobs)
        key = predictions_key(parent_id, MANIFEST_FILE)
        put_bytes(self.artifacts, key, merged.dumps())
        if failed:
            which = ", ".join(f"{j.id} {j.state.value}" for j in failed)
            end, reason = JobState.FAILED, f"{len(failed)} of {len(jobs)} shards failed: {which}"
        else:
            end, reason = JobState.SUCCEEDED, f"{len(jobs)} shards, {merged.rows} rows scored"

        def change(job: JobRecord) -> dict[str, Any] | None:
            if job.state.terminal:
                return None
            return {"state": end, "reason": reason, "finished_at": utcnow(), "outputs": [key]}

        self._transition(parent_id, change)

    def _merged(self, parent: JobRecord, jobs: list[JobRecord]) -> Manifest:
        """One manifest for the parent: every shard of every child, in order."""
        batch = parent.spec.batch
        merged = Manifest(
            job_id=parent.id,
            output_format=batch.output_format if batch else "parquet",
            max_rows_per_shard=batch.max_rows_per_shard if batch else 1,
            complete=True,
        )
        for job in jobs:
            key = predictions_key(job.id, MANIFEST_FILE)
            try:
                part = Manifest.loads(get_bytes(self.artifacts, key), where=key)
            except (NotFound, ValueError):
                merged.complete = False
                continue
            merged.rows += part.rows
            merged.bytes += part.bytes
            merged.bad_rows += part.bad_rows
            merged.complete = merged.complete and part.complete
            merged.shards += part.shards
        return merged


def _keys(parent: JobRecord, count: int) -> list[str]:
    return [f"{parent.key}#shard-{n}" for n in range(count)]
