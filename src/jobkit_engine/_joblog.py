"""One log line per job outcome, in the same words on every engine: the `jobkit.jobs` logger.

An engine settles an execution's outcome (`settle`) and stores the decision; then it calls
`log_outcome` with that decision, so what an operator reads about a job does not depend on
where it ran. The line names the job, its queue, engine and attempt, what happens next
(succeeded, failed, retrying in 2.0s, sleeping until …, cancelled, interrupted, handed
back), how long the execution took, and for a failure the error's type and message on one
line, cut short. Never the payload, the result or a traceback: they may hold what must not
reach a log, and `get_job` has them. A URL's password in an error message is masked.

The same facts are the record's attributes (`extra=`), for a JSON formatter:
`job_id, job_name, queue, engine, attempt, outcome, duration` always, `retry_in`,
`wake_at`, `error_type` and `error` when they apply (`jobkit.logs.JsonFormatter` writes
them, as does any formatter that writes a record's extra attributes).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any

from jobkit_engine._lifecycle import Decision, Finish
from jobkit_engine._status import JobError, JobStatus

JOB_LOGGER = "jobkit.jobs"
"""The logger of the job outcome lines."""

ERROR_LIMIT = 200  # characters of an error's summary in a line

log = logging.getLogger(JOB_LOGGER)

# A credential in a URL (scheme://user:password@host): masked in what is logged.
_CREDENTIALS = re.compile(r"(\b[a-zA-Z][\w+.-]*://)[^\s/@]*@")

_FINAL = {
    JobStatus.SUCCEEDED: ("succeeded", logging.INFO),
    JobStatus.FAILED: ("failed", logging.ERROR),
    JobStatus.CANCELLED: ("cancelled", logging.INFO),
}


def error_summary(error: JobError) -> str:
    """`Type: message` on one line, at most `ERROR_LIMIT` characters, URL passwords masked."""
    text = " ".join(f"{error.type}: {error.message}".split())
    text = _CREDENTIALS.sub(r"\1***@", text)
    return text if len(text) <= ERROR_LIMIT else text[: ERROR_LIMIT - 1] + "…"


def log_outcome(
    decision: Decision,
    *,
    job_id: str,
    job_name: str | None,
    queue: str,
    engine: str,
    attempt: int | None,
    duration: float | None,
    now: datetime,
    logger: logging.Logger | logging.LoggerAdapter[Any] = log,
) -> None:
    """Log what `decision` (settle's answer at `now`) does with the job: one line.

    `duration` is the execution's, in seconds (None when nothing ran). A workflow engine
    passes a logger that stays quiet while its code is replayed.
    """
    words, level, fields = _describe(decision, now)
    if logger.isEnabledFor(level):  # a worker that logs nothing pays nothing more
        job = _job(job_id, job_name, queue, engine, attempt, duration)
        _emit(logger, level, words, {**job, **fields})


def log_handed_back(
    *,
    job_id: str,
    job_name: str,
    queue: str,
    engine: str,
    attempt: int | None,
    logger: logging.Logger | logging.LoggerAdapter[Any] = log,
) -> None:
    """Log that this worker handed the job back for a worker that knows it (a rolling
    deploy). Engines log it once per job and worker process, not at every hand-back."""
    if logger.isEnabledFor(logging.WARNING):
        job = _job(job_id, job_name, queue, engine, attempt, None)
        _emit(logger, logging.WARNING, "handed back", {**job, "outcome": "handed_back"})


def _job(
    job_id: str,
    job_name: str | None,
    queue: str,
    engine: str,
    attempt: int | None,
    duration: float | None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "job_name": job_name,
        "queue": queue,
        "engine": engine,
        "attempt": attempt,
        "duration": None if duration is None else round(duration, 6),
    }


def _describe(decision: Decision, now: datetime) -> tuple[str, int, dict[str, Any]]:
    """(the words, the level, the fields beyond the job's own) for a decision."""
    if isinstance(decision, Finish):
        words, level = _FINAL[decision.status]
        fields: dict[str, Any] = {"outcome": words}
    elif decision.status == JobStatus.SLEEPING and decision.at is not None:
        wake_at = _iso(decision.at)
        words, level = f"sleeping until {wake_at}", logging.INFO
        fields = {"outcome": "sleeping", "wake_at": wake_at}
    elif decision.at is not None:
        retry_in = max(0.0, (decision.at - now).total_seconds())
        words, level = f"retrying in {retry_in:.1f}s", logging.WARNING
        fields = {"outcome": "retrying", "retry_in": round(retry_in, 3)}
    else:  # back on the queue, the attempt not counted: the worker stopped it
        words, level = "interrupted", logging.WARNING
        fields = {"outcome": "interrupted"}
    if decision.error is not None:
        fields["error_type"] = decision.error.type
        fields["error"] = error_summary(decision.error)
    return words, level, fields


def _emit(
    logger: logging.Logger | logging.LoggerAdapter[Any],
    level: int,
    words: str,
    extra: dict[str, Any],
) -> None:
    """The line, and its facts as the record's attributes."""
    line = f"job {extra['job_id']} {words}: {extra['job_name'] or '?'}"
    line += f" queue={extra['queue']} engine={extra['engine']}"
    if extra["attempt"] is not None:
        line += f" attempt={extra['attempt']}"
    if extra["duration"] is not None:
        line += f" duration={extra['duration']:.3f}s"
    if "error" in extra:
        line += f" error={extra['error']}"
    logger.log(level, line, extra=extra)  # no args: a '%' in the line is not a format


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
