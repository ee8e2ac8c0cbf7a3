"""Jobs in Redis: the RQ job hash jobkit writes, and how it reads one back.

The hash is built by RQ's own `Job` (so `Job.fetch`, `rq info` and dashboards read it),
with jobkit's fields beside RQ's: `jk_name`, `jk_attempts`, `jk_result`, `jk_step:<id>`…
RQ's function name is the jobkit job *name*, a registry key — never an import path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from jobkit_dispatch.engines.base import JobRequest
from jobkit_dispatch.engines.rq.keys import step_field_prefix
from jobkit_engine import JobError, JobInfo, JobStatus, Progress

INFO_FIELDS = (
    "status",
    "origin",
    "jk_name",
    "jk_reason",
    "jk_attempts",
    "jk_max_attempts",
    "jk_result",
    "jk_error",
    "jk_progress",
    "jk_created_at",
    "jk_scheduled_for",
    "jk_started_at",
    "jk_finished_at",
    "jk_wait",
)

_STATUS = {
    "queued": JobStatus.QUEUED,
    "deferred": JobStatus.QUEUED,
    "started": JobStatus.RUNNING,
    "finished": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
    "stopped": JobStatus.FAILED,
    "canceled": JobStatus.CANCELLED,
}


class CorruptJobError(Exception):
    """A job hash that cannot be read back (bad data, not JSON, missing fields)."""


def job_mapping(request: JobRequest, now: float, timeout: int, connection: Any) -> dict[str, Any]:
    """The fields of a new job hash: RQ's (via `rq.job.Job`, which does no I/O here) and
    jobkit's."""
    job = Job.create(
        request.job_name,
        args=(request.payload,),
        id=request.job_id,
        origin=request.queue,
        connection=connection,
        serializer=JSONSerializer,
        timeout=timeout,
        description=request.job_name,
    )
    job.enqueued_at = datetime.fromtimestamp(now, UTC).replace(tzinfo=None)
    fields = job.to_dict(include_meta=False)
    fields["status"] = "queued"
    fields.update(
        jk_name=request.job_name,
        jk_reason=request.reason,
        jk_attempts=0,
        jk_max_attempts=request.max_attempts,
        jk_created_at=repr(now),
    )
    return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run a job it just started."""

    job_id: str
    job_name: str
    payload: Any
    attempt: int
    steps: dict[str, Any]


def decode_claimed(job_id: str, flat: list[bytes], connection: Any) -> ClaimedJob:
    """Read the HGETALL reply of the start script. Raises `CorruptJobError`."""
    raw = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
    try:
        job = Job(job_id, connection=connection, serializer=JSONSerializer)
        job.restore({k.encode(): v for k, v in raw.items()})
        payload = job.args[0] if job.args else None
        steps = {
            key[len(step_field_prefix) :]: json.loads(value)
            for key, value in raw.items()
            if key.startswith(step_field_prefix)
        }
        return ClaimedJob(job_id, job.func_name, payload, int(raw["jk_attempts"]), steps)
    except Exception as exc:  # whatever is wrong with the hash, the job cannot run
        raise CorruptJobError(
            f"job {job_id} cannot be decoded: {type(exc).__name__}: {exc}"
        ) from exc


def _time(value: bytes | None) -> datetime | None:
    return None if not value else datetime.fromtimestamp(float(value), UTC)


def _json(value: bytes | None) -> Any:
    return None if value is None else json.loads(value)


def decode_info(job_id: str, values: list[bytes | None], engine: str) -> JobInfo | None:
    """`HMGET INFO_FIELDS` → `JobInfo`, or None when there is no such job."""
    f = dict(zip(INFO_FIELDS, values, strict=True))
    if f["status"] is None or f["jk_name"] is None:
        return None
    rq_status = f["status"].decode()
    if rq_status == "scheduled":
        status = JobStatus.SLEEPING if f["jk_wait"] == b"sleep" else JobStatus.SCHEDULED
    else:
        status = _STATUS.get(rq_status, JobStatus.QUEUED)
    error = _json(f["jk_error"])
    progress = _json(f["jk_progress"])
    return JobInfo(
        job_id=job_id,
        job_name=f["jk_name"].decode(),
        queue=(f["origin"] or b"").decode(),
        status=status,
        engine=engine,
        reason=(f["jk_reason"] or b"").decode(),
        attempts=int(f["jk_attempts"] or 0),
        max_attempts=int(f["jk_max_attempts"] or 1),
        result=_json(f["jk_result"]),
        error=None if error is None else JobError(**error),
        progress=None if progress is None else Progress(**progress),
        created_at=_time(f["jk_created_at"]),
        scheduled_for=_time(f["jk_scheduled_for"]),
        started_at=_time(f["jk_started_at"]),
        finished_at=_time(f["jk_finished_at"]),
    )


def rq_now() -> str:
    """Now, in the format of RQ's own timestamps (`started_at`, `ended_at`, heartbeats)."""
    return utcformat(datetime.now(UTC).replace(tzinfo=None))


def encode_error(error: JobError) -> str:
    return json.dumps({"type": error.type, "message": error.message, "traceback": error.traceback})
