"""Jobs in Redis: the RQ job hash jobkit writes, and how it reads one back.

The hash is built by RQ's own `Job` (so `Job.fetch`, `rq info` and dashboards read it),
with jobkit's fields beside RQ's: `jk_name`, `jk_attempts`, `jk_result`, `jk_step:<id>`…
RQ's function name is the jobkit job *name*, a registry key — never an import path.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import utcformat

from jobkit.errors import CorruptJobError
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
    "jk_moved_to",
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
    unknown_since: float | None = None  # when a worker that did not know it first had it
    retries: int = 0  # operator retries so far: the round this attempt belongs to
    attempt_started: float | None = None  # when this attempt first began (not its resume)


def decode_claimed(job_id: str, flat: list[bytes], connection: Any) -> ClaimedJob:
    """Read the HGETALL reply of the start script. Raises `CorruptJobError`."""
    try:
        raw = {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}
        job = Job(job_id, connection=connection, serializer=JSONSerializer)
        job.restore({k.encode(): v for k, v in raw.items()})
        payload = job.args[0] if job.args else None
        steps = {
            key[len(step_field_prefix) :]: json.loads(value)
            for key, value in raw.items()
            if key.startswith(step_field_prefix)
        }
        since = raw.get("jk_unknown_since")
        began = raw.get("jk_attempt_started", raw.get("jk_started_at"))
        return ClaimedJob(
            job_id,
            job.func_name,
            payload,
            int(raw["jk_attempts"]),
            steps,
            None if since is None else float(since),
            int(raw.get("jk_retries", b"0")),
            None if began is None else float(began),
        )
    except Exception as exc:  # whatever is wrong with the hash, the job cannot run
        raise CorruptJobError(
            job_id, f"its record cannot be decoded: {type(exc).__name__}: {exc}"
        ) from exc


class _Fields:
    """The fields of one job hash, each read back with its field named if it is corrupt."""

    def __init__(self, job_id: str, values: list[bytes | None]) -> None:
        self.job_id = job_id
        self.raw = dict(zip(INFO_FIELDS, values, strict=True))

    def read(self, field: str, parse: Any, default: Any = None) -> Any:
        value = self.raw[field]
        if value is None:
            return default
        try:
            return parse(value)
        except Exception as exc:  # whatever wrote the field, get_job must say which it is
            shown = value[:80] if isinstance(value, bytes) else value
            raise CorruptJobError(
                self.job_id, f"field {field!r} of its record is {shown!r}: {exc}"
            ) from None

    def text(self, field: str, default: str = "") -> str:
        return self.read(field, bytes.decode, default)


def _time(value: bytes) -> datetime | None:
    return datetime.fromtimestamp(float(value), UTC) if value else None


def _error(value: bytes) -> JobError:
    return JobError(**json.loads(value))


def _progress(value: bytes) -> Progress:
    return Progress(**json.loads(value))


def status_of(rq_status: str, wait: bytes | None) -> JobStatus:
    """jobkit's status of a job hash: RQ's `status` field, and `jk_wait` (why a scheduled
    job waits) to tell a sleep from a delay or a backoff."""
    if rq_status == "scheduled":
        return JobStatus.SLEEPING if wait == b"sleep" else JobStatus.SCHEDULED
    return _STATUS.get(rq_status, JobStatus.QUEUED)


def decode_info(job_id: str, values: list[bytes | None], engine: str) -> JobInfo | None:
    """`HMGET INFO_FIELDS` → `JobInfo`, or None when there is no such job. A field that
    cannot be read raises `CorruptJobError` naming it."""
    f = _Fields(job_id, values)
    if f.raw["jk_name"] is None or f.raw["jk_moved_to"] is not None:
        return None  # no job, not one of jobkit's, or the marker of a job that moved (FENCE)
    if f.raw["status"] is None:
        raise CorruptJobError(job_id, "its record has no status")
    status = status_of(f.text("status"), f.raw["jk_wait"])
    return JobInfo(
        job_id=job_id,
        job_name=f.text("jk_name"),
        queue=f.text("origin"),
        status=status,
        engine=engine,
        reason=f.text("jk_reason"),
        attempts=f.read("jk_attempts", int, 0),
        max_attempts=f.read("jk_max_attempts", int, 1),
        result=f.read("jk_result", json.loads),
        error=f.read("jk_error", _error),
        progress=f.read("jk_progress", _progress),
        created_at=f.read("jk_created_at", _time),
        scheduled_for=f.read("jk_scheduled_for", _time),
        started_at=f.read("jk_started_at", _time),
        finished_at=f.read("jk_finished_at", _time),
    )


def micro_time() -> float:
    """Now, to the microsecond. Times that order jobs in a listing (created, finished) are
    stored at this precision, so that a stored time, its index score and the datetime
    `get_job` reports are the same number and a listing cursor is exact."""
    return round(time.time(), 6)


def micros(at: float) -> int:
    """A `micro_time` as whole microseconds: the score of the open-jobs index."""
    return round(at * 1_000_000)


def rq_now() -> str:
    """Now, in the format of RQ's own timestamps (`started_at`, `ended_at`, heartbeats)."""
    return utcformat(datetime.now(UTC).replace(tzinfo=None))


def encode_error(error: JobError) -> str:
    return json.dumps({"type": error.type, "message": error.message, "traceback": error.traceback})
