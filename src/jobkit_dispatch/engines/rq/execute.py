"""Running one job a worker popped: start it, run its handler once, store the outcome.

A job costs two scripts here, START and FINISH (besides the pop), plus one write per
completed step and one check per step function run (BEGIN_STEP, see `cancel`). Its
completed steps arrive with START's reply, so replaying them costs nothing. What an
outcome means (retry, resume, cancel, fail) is decided by the lifecycle core, `settle`;
FINISH only stores it, atomically against a cancel and against crash recovery by another
worker, so a job is never run twice at once and its last word is never lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError, ResponseError

from jobkit.errors import CorruptJobError
from jobkit.queues import QueueRegistry
from jobkit.settings import JobkitSettings
from jobkit_dispatch.engines.rq import keys
from jobkit_dispatch.engines.rq.codec import (
    ClaimedJob,
    decode_claimed,
    encode_error,
    micro_time,
    rq_now,
)
from jobkit_dispatch.engines.rq.poison import Poison
from jobkit_dispatch.engines.rq.state import ProgressWriter, RedisStepMemo
from jobkit_dispatch.engines.rq.unknown import UnknownJobs
from jobkit_engine import JobContext, JobError, JobRegistry, JobStatus, SystemClock
from jobkit_engine.runtime import (
    Cancelled,
    Decision,
    Failed,
    Finish,
    Interrupted,
    MemoSteps,
    Outcome,
    RunAgain,
    StrictMode,
    execute_job,
    log_outcome,
    settle,
)

if TYPE_CHECKING:
    from jobkit_dispatch.engines.rq.cancel import Cancellations
    from jobkit_dispatch.engines.rq.link import WorkerLink

log = logging.getLogger("jobkit.worker")

_CANCELLED = Finish(JobStatus.CANCELLED)


class Executor:
    """Runs the jobs one worker popped, each in its own task."""

    def __init__(
        self,
        link: WorkerLink,
        cancels: Cancellations,
        *,
        lease: float,
        registry: JobRegistry,
        queues: QueueRegistry,
        poison: Poison | None = None,
    ) -> None:
        self._link = link
        self._cancels = cancels
        self._poison = poison or Poison(link)
        self._unknown = UnknownJobs(link, registry, link.settings.unknown_job_grace)
        self._lease = lease
        self._registry = registry
        self._queues = queues
        self._clock = SystemClock()
        self._sleep_threshold = timedelta(seconds=link.settings.sleep_threshold)
        self._max_bytes = link.settings.max_payload_bytes
        # JOBKIT_STRICT: hold handler code outside steps to Temporal's workflow rules here
        # too (staging), so a job that would break on fallback fails where it is seen.
        self._strict = StrictMode.from_settings(link.settings)

    async def run_job(self, job_id: str) -> None:
        """Start the popped job, run it once and record how it ended."""
        try:
            claimed = await self._start(job_id)
            if claimed is not None:
                await self._run(claimed)
        except Exception:  # a bug, or data no code expected: the lease lapses, it runs again
            log.exception("job %s: unexpected error in the worker; its lease will lapse", job_id)
        finally:
            self._cancels.forget(job_id)

    async def _start(self, job_id: str) -> ClaimedJob | None:
        """Take the job over from the claimed list: None when it is not ours to run."""
        link = self._link
        now = time.time()
        try:
            flat = await link.start(
                keys=[keys.job_key(job_id), link.keys.claimed, link.keys.running],
                args=[job_id, now, now + self._lease, link.name, rq_now()],
            )
        except ResponseError as exc:  # the script failed, on the job's record perhaps
            log.warning("job %s: cannot start (%s)", job_id, exc)
            await self._poison.check(job_id)
            return None
        except (RedisError, OSError) as exc:  # the id stays claimed; housekeeping hands it back
            log.warning("job %s: cannot start (%s)", job_id, exc)
            return None
        if not flat:  # cancelled, recovered elsewhere, or no record to start: see which
            await self._poison.check(job_id)
            return None
        try:
            return decode_claimed(job_id, flat, link.redis)
        except CorruptJobError as exc:
            log.error("%s", exc)
            await self.finish(job_id, Failed(JobError.from_exception(exc), None))
            return None

    async def _run(self, claimed: ClaimedJob) -> None:
        link, job_id = self._link, claimed.job_id
        started = time.monotonic()
        if claimed.job_name not in self._registry:  # a rolling deploy: hand it back
            instead = await self._unknown.handle(claimed)
            if instead is not None:
                await link.retrying(lambda: self.finish(job_id, instead, claimed, started))
            return
        await self._unknown.known(claimed)
        job_key = keys.job_key(job_id)
        memo = RedisStepMemo(link.redis, job_key, claimed.steps, link.retrying)
        progress = ProgressWriter(link.redis, job_key)
        steps = MemoSteps(
            memo,
            self._clock,
            self._sleep_threshold,
            max_bytes=self._max_bytes,
            before_step=self._cancels.step_gate(link, job_id, job_key),
        )

        def make_context(definition: Any) -> JobContext:
            return JobContext(
                job_id=job_id,
                job_name=claimed.job_name,
                attempt=claimed.attempt,
                engine="rq",
                progress_sink=progress.report,
                step=steps,
            )

        outcome: Outcome
        if job_id in self._cancels:  # cancelled after it started, before its handler did
            outcome = Cancelled()
        else:
            outcome = await self._call_handler(claimed, make_context)
        await progress.flush()
        await link.retrying(lambda: self.finish(job_id, outcome, claimed, started))

    async def _call_handler(
        self, claimed: ClaimedJob, make_context: Callable[[Any], JobContext]
    ) -> Outcome:
        """One execution of the job's handler; only while it runs may it be interrupted."""
        job_id = claimed.job_id
        self._cancels.in_handler.add(job_id)
        try:
            return await execute_job(
                claimed.job_name,
                claimed.payload,
                claimed.attempt,
                make_context,
                registry=self._registry,
                queues=self._queues,
                max_bytes=self._max_bytes,
                strict=self._strict,
            )
        except asyncio.CancelledError:
            return Cancelled() if job_id in self._cancels else Interrupted()
        except (RedisError, OSError) as exc:  # a step could not be saved: retry the attempt
            return Failed(JobError.from_exception(exc), timedelta(seconds=1))
        finally:
            self._cancels.in_handler.discard(job_id)

    async def finish(
        self,
        job_id: str,
        outcome: Outcome,
        claimed: ClaimedJob | None = None,
        started: float | None = None,
    ) -> None:
        """Store what `settle` decides for the attempt's outcome, if this worker still
        holds the job's lease, and log it (`claimed`: the job, `started`: when its execution
        began, on the monotonic clock). FINISH applies settle's first rule again,
        atomically: a cancel accepted after this worker last looked still wins."""
        q, settings = self._link.keys, self._link.settings
        now = micro_time()
        when = datetime.fromtimestamp(now, UTC)
        decision = settle(outcome, now=when, cancel_requested=job_id in self._cancels)
        kind, due, ttl, fields = stored(decision, settings)
        args: list[Any] = [job_id, kind, now, due, ttl, settings.failure_ttl, rq_now()]
        args.extend(attempt_record(claimed, kind, now, getattr(decision, "error", None)))
        for item in fields.items():
            args.extend(item)
        written = await self._link.finish(
            keys=[
                keys.job_key(job_id),
                q.running,
                q.scheduled,
                q.queue,
                q.finished,
                q.failed,
                q.canceled,
                q.open,
            ],
            args=args,
        )
        if not written:
            log.warning("job %s: lease lost before it finished; it runs again elsewhere", job_id)
            return
        if written == 2:  # a cancel came before it could end as decided
            decision = _CANCELLED
        log_outcome(
            decision,
            job_id=job_id,
            job_name=None if claimed is None else claimed.job_name,
            queue=q.name,
            engine="rq",
            attempt=None if claimed is None else claimed.attempt,
            duration=None if started is None else time.monotonic() - started,
            now=when,
        )


def stored(decision: Decision, settings: JobkitSettings) -> tuple[str, float, int, dict[str, Any]]:
    """How FINISH stores a decision: (its outcome name, due time, ttl, fields to write)."""
    match decision:
        case Finish(status=JobStatus.SUCCEEDED, result=result):
            return "succeeded", 0, settings.result_ttl, {"jk_result": json.dumps(result)}
        case Finish(status=JobStatus.FAILED, error=error):
            return "failed", 0, settings.failure_ttl, _error_field(error)
        case Finish():
            return "cancelled", 0, settings.failure_ttl, {}
        case RunAgain(at=None):
            return "requeue", 0, 0, {}
        case RunAgain(status=status, at=at, error=error) if at is not None:
            kind = "sleep" if status == JobStatus.SLEEPING else "retry"
            return kind, at.timestamp(), 0, _error_field(error)
    raise TypeError(f"not a decision FINISH can store: {decision!r}")


def attempt_record(
    claimed: ClaimedJob | None, kind: str, now: float, error: JobError | None
) -> list[str]:
    """FINISH's attempt arguments: the attempt's field and its record. Only an attempt that
    is retried gets one: one that ends the job is told by the job's own fields (a record
    would cost every finished job its compact hash encoding: Redis keeps a hash whose
    values are all short as a listpack, several times smaller)."""
    if claimed is None or kind != "retry":
        return ["", ""]
    field = f"{keys.attempt_field_prefix}{claimed.retries}:{claimed.attempt}"
    record = {
        "number": claimed.attempt,
        "outcome": "retrying",
        "started": claimed.attempt_started,
        "finished": now,
        "error": None if error is None else _error_json(error),
    }
    return [field, json.dumps(record)]


def _error_json(error: JobError) -> dict[str, Any]:
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def _error_field(error: JobError | None) -> dict[str, Any]:
    return {} if error is None else {"jk_error": encode_error(error)}
