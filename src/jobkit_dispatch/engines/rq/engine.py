"""`RQEngine`: the dispatch side and the operator's. Each call is one Redis round trip (one
script, HMGET or HGETALL; a page of a listing is one pipeline), except a purge, which
deletes in batches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from redis.exceptions import RedisError

from jobkit.circuit import CircuitBreaker
from jobkit.connection import command_sent, get_redis
from jobkit.errors import EngineUnavailableError, JobMovedError, JobNotFoundError
from jobkit.queues import QueueRegistry, default_queues
from jobkit.settings import JobkitSettings, get_settings, redact_url
from jobkit_dispatch.engines.base import EngineBase, Fenced, JobRequest
from jobkit_dispatch.engines.recovery import JobDetail, JobPage, JobQuery
from jobkit_dispatch.engines.rq import keys
from jobkit_dispatch.engines.rq.codec import (
    INFO_FIELDS,
    decode_info,
    job_mapping,
    micro_time,
    micros,
)
from jobkit_dispatch.engines.rq.detail import decode_detail
from jobkit_dispatch.engines.rq.listing import Lister
from jobkit_dispatch.engines.rq.recovery import Recovery
from jobkit_dispatch.engines.rq.scripts import CANCEL, ENQUEUE, FENCE, LIVE_WORKERS, WITHDRAW
from jobkit_engine import JobInfo, JobStatus

if TYPE_CHECKING:
    from redis import Redis

_ASK_REDIS = object()  # availability: the answer needs a round trip to Redis

T = TypeVar("T")


class RQEngine(EngineBase):
    """Enqueues jobs as RQ jobs (JSON, never pickle); `jobkit worker` runs them."""

    name: ClassVar[str] = "rq"
    supports_delay: ClassVar[bool] = True
    supports_durable_sleep: ClassVar[bool] = True
    supports_cancel_running: ClassVar[bool] = True
    supports_progress: ClassVar[bool] = True
    supports_pickup_confirmation: ClassVar[bool] = True
    # Indexes kept by the scripts (`scripts_ops`): a page reads a bounded number of jobs.
    supports_listing: ClassVar[bool] = True
    supports_retry: ClassVar[bool] = True  # the step memo stays in the hash: resumes
    supports_purge: ClassVar[bool] = True

    def __init__(
        self,
        redis: Redis | None = None,
        *,
        settings: JobkitSettings | None = None,
        queues: QueueRegistry = default_queues,
    ) -> None:
        self.settings = settings or get_settings()
        self.redis = redis if redis is not None else get_redis(settings=self.settings)
        self._queues = queues
        self._enqueue = self.redis.register_script(ENQUEUE)
        self._cancel = self.redis.register_script(CANCEL)
        self._live_workers = self.redis.register_script(LIVE_WORKERS)
        self._withdraw = self.redis.register_script(WITHDRAW)
        self._fence = self.redis.register_script(FENCE)
        self._lister = Lister(self.redis, self.settings, queues, self.name)
        self._recovery = Recovery(self.redis, self.settings, self.name)
        self.breaker = CircuitBreaker(self.settings.circuit_cool_down)
        self._live: dict[str, tuple[float, int]] = {}  # queue -> (valid until, live workers)

    @classmethod
    def from_settings(cls, settings: JobkitSettings) -> RQEngine:
        return cls(settings=settings)

    def _unavailable(self, exc: Exception, *, written: bool = False) -> EngineUnavailableError:
        """The error for a failed Redis call; `written` for a call that changes a job, whose
        outcome is unknown once the command was sent (its reply may be all that was lost)."""
        where = redact_url(self.settings.redis_url)
        why = f"Redis at {where}: {type(exc).__name__}: {exc}"
        self.breaker.failure(why)
        return EngineUnavailableError(
            f"redis-unhealthy: {why}", outcome_unknown=written and command_sent(exc)
        )

    def _refuse_if_open(self) -> None:
        """While the circuit is open, a lookup or a cancellation fails at once too: a hung
        Redis costs the first call its timeouts, not every call."""
        if not self.breaker.allow():
            why = f"redis-unhealthy: {self.breaker.last_failure} (circuit open)"
            raise EngineUnavailableError(why)

    def availability(self, request: JobRequest) -> str | None:
        """Redis answers and a live jobkit worker serves the queue (it also promotes
        delayed jobs). The answer is reused for `worker_check_ttl` seconds, and an open
        circuit skips Redis at once, so a dispatch rarely pays a round trip here."""
        known = self._known_availability(request)
        return self._ask_availability(request) if known is _ASK_REDIS else known

    async def aavailability(self, request: JobRequest) -> str | None:
        """`availability` for a running loop: answered from memory when it can be, and
        in a thread when it needs Redis, whose wait must not stall the loop."""
        known = self._known_availability(request)
        if known is _ASK_REDIS:
            return await asyncio.to_thread(self._ask_availability, request)
        return known

    def _known_availability(self, request: JobRequest) -> str | object | None:
        """The answer that needs no Redis (an open circuit, a fresh count of live
        workers), or `_ASK_REDIS`."""
        if not self.breaker.allow():
            return f"redis-unhealthy: {self.breaker.last_failure} (circuit open)"
        cached = self._live.get(request.queue)
        if cached is None or cached[0] <= time.monotonic():
            return _ASK_REDIS
        return None if cached[1] else f"no-live-worker: {request.queue}"

    def _ask_availability(self, request: JobRequest) -> str | None:
        now = time.monotonic()
        oldest = time.time() - 3 * self.settings.worker_heartbeat
        try:
            alive = self._live_workers(keys=[keys.QueueKeys(request.queue).workers], args=[oldest])
        except RedisError as exc:
            return str(self._unavailable(exc))
        self.breaker.success()
        self._live[request.queue] = (now + self.settings.worker_check_ttl, alive)
        return None if alive else f"no-live-worker: {request.queue}"

    def confirm_pickup(self, request: JobRequest, timeout: float) -> bool:
        key = keys.job_key(request.job_id)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.redis.hget(key, "status") != b"queued":
                    return True
                time.sleep(0.005)
            q = keys.QueueKeys(request.queue)
            return self._withdraw(keys=[key, q.queue, q.open], args=[request.job_id]) != 1
        except RedisError:
            return True  # it is enqueued and cannot be withdrawn: it stays and runs here

    def enqueue(self, request: JobRequest) -> bool:
        now = micro_time()
        due = request.due_at(datetime.fromtimestamp(now, UTC))
        timeout = int(self._queues.get(request.queue).default_timeout.total_seconds())
        fields = job_mapping(request, now, timeout, self.redis)
        deferred = due is not None and due.timestamp() > now
        if deferred:
            fields.update(
                status="scheduled", jk_wait="delay", jk_scheduled_for=repr(due.timestamp())
            )
        q = keys.QueueKeys(request.queue)
        args: list[Any] = [
            request.job_id,
            "at" if deferred else "now",
            due.timestamp() if due else 0,
            micros(now),
        ]
        for item in fields.items():
            args.extend(item)
        try:
            reply = self._enqueue(
                keys=[
                    keys.job_key(request.job_id),
                    q.queue,
                    keys.queues_set_key,
                    q.scheduled,
                    q.open,
                ],
                args=args,
            )
        except RedisError as exc:
            raise self._unavailable(exc, written=True) from exc
        self.breaker.success()
        if reply == 1:
            return True
        moved_to, reason = reply
        if moved_to:
            raise JobMovedError(request.job_id, moved_to.decode(), (reason or b"").decode())
        return False

    def fence(self, job_id: str, engine: str, reason: str) -> Fenced:
        """Hand the job over to `engine`, which holds a copy of it, unless a worker here
        has had it (see `scripts.FENCE`): from then on exactly one engine runs it."""
        fenced = self._run_fence(job_id, engine, reason, "hand-over")
        assert fenced is not None
        return fenced

    def holder(self, job_id: str) -> Fenced | None:
        """What `fence` would keep, without writing anything: RQ, when a worker here has
        had the job; the engine of its marker; None when there is no job or one that no
        worker started."""
        return self._run_fence(job_id, "", "", "look")

    def _run_fence(self, job_id: str, engine: str, reason: str, mode: str) -> Fenced | None:
        self._refuse_if_open()
        args = [
            job_id,
            engine,
            reason,
            self.settings.failure_ttl,
            keys.queue_key_prefix,
            keys.scheduled_key_prefix,
            mode,
            keys.open_key_prefix,
        ]
        try:
            reply = self._fence(keys=[keys.job_key(job_id)], args=args)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        self.breaker.success()
        if not reply:
            return None
        if reply[0] == b"rq":
            return Fenced(self.name, reply[1].decode())
        return Fenced(reply[1].decode(), reply[2].decode())

    def get(self, job_id: str) -> JobInfo | None:
        self._refuse_if_open()
        try:
            values = self.redis.hmget(keys.job_key(job_id), INFO_FIELDS)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        self.breaker.success()
        return decode_info(job_id, values, self.name)

    def cancel(self, job_id: str) -> bool:
        args = [
            job_id,
            micro_time(),
            self.settings.failure_ttl,
            keys.cancel_channel,
            keys.queue_key_prefix,
            keys.scheduled_key_prefix,
            keys.canceled_key_prefix,
            keys.open_key_prefix,
        ]
        self._refuse_if_open()
        try:
            answer = self._cancel(keys=[keys.job_key(job_id)], args=args)
        except RedisError as exc:
            raise self._unavailable(exc) from exc
        self.breaker.success()
        if answer == -1:
            raise JobNotFoundError(job_id)
        return answer > 0

    # -- operator capabilities (engines/recovery.py) ---------------------------------------

    def _ask(self, call: Callable[[], T], *, written: bool = False) -> T:
        """One operator call against Redis, with the circuit and the error mapping of
        `get` (`written`: it changes jobs, see `_unavailable`)."""
        self._refuse_if_open()
        try:
            answer = call()
        except RedisError as exc:
            raise self._unavailable(exc, written=written) from exc
        self.breaker.success()
        return answer

    def list_jobs(self, query: JobQuery) -> JobPage:
        return self._ask(lambda: self._lister.page(query, time.time()))

    async def alist_jobs(self, query: JobQuery) -> JobPage:
        return await asyncio.to_thread(self.list_jobs, query)

    def describe(self, job_id: str) -> JobDetail | None:
        raw = self._ask(lambda: self.redis.hgetall(keys.job_key(job_id)))
        return decode_detail(job_id, raw, self.name, datetime.now(UTC), self.redis)

    async def adescribe(self, job_id: str) -> JobDetail | None:
        return await asyncio.to_thread(self.describe, job_id)

    def retry(self, job_id: str, *, from_scratch: bool = False) -> JobInfo:
        return self._ask(
            lambda: self._recovery.retry(job_id, from_scratch=from_scratch), written=True
        )

    async def aretry(self, job_id: str, *, from_scratch: bool = False) -> JobInfo:
        return await asyncio.to_thread(self.retry, job_id, from_scratch=from_scratch)

    def purge(self, queue: str, status: JobStatus) -> int:
        return self._ask(lambda: self._recovery.purge(queue, status), written=True)

    async def apurge(self, queue: str, status: JobStatus) -> int:
        return await asyncio.to_thread(self.purge, queue, status)
