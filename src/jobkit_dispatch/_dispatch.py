"""The dispatcher: validate a job, pick an engine, enqueue; find a job again by id."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic_core import PydanticSerializationError

from jobkit.durations import Duration
from jobkit.errors import (
    ConfigurationError,
    DispatchArgumentError,
    DispatchError,
    EngineUnavailableError,
    JobMovedError,
    JobNotFoundError,
    PayloadTooLargeError,
    PayloadValidationError,
    StepError,
)
from jobkit.queues import QueueRegistry, default_queues
from jobkit.settings import JobkitSettings, get_settings
from jobkit_dispatch._arguments import checked_at, checked_delay, has_non_finite
from jobkit_dispatch._copies import Copies, hand_over, held_before, missed
from jobkit_dispatch.engines import Engine, JobRequest, load_engine
from jobkit_dispatch.engines.base import Fenced, aavailability
from jobkit_engine import JobDefinition, JobInfo, JobRegistry, default_registry
from jobkit_engine.runtime import encode

_SETTING: Any = object()  # "use JOBKIT_PICKUP_TIMEOUT"
_IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c7c2e-3b0e-4d8a-9a56-8f0b8f8f7a10")


@dataclass(frozen=True)
class Dispatched:
    """Where a dispatched job went. `created` is False when an idempotency key matched a
    job dispatched earlier: that job is returned and nothing new was enqueued."""

    job_id: str
    engine: str
    reason: str
    created: bool = True


def idempotent_job_id(job_name: str, idempotency_key: str) -> str:
    """The job id an idempotency key maps to: the same on every engine and every process."""
    return uuid.uuid5(_IDEMPOTENCY_NAMESPACE, f"{job_name}\x00{idempotency_key}").hex


class Dispatcher:
    """Routes jobs to engines. One per process is the default (`get_dispatcher()`).

    `engine=` forces every job onto one engine (tests, `JOBKIT_ENGINE=inline`); otherwise
    `settings.engine` decides, `"auto"` meaning RQ first and Temporal as the fallback.
    """

    def __init__(
        self,
        engine: Engine | None = None,
        *,
        settings: JobkitSettings | None = None,
        registry: JobRegistry = default_registry,
        queues: QueueRegistry = default_queues,
    ) -> None:
        self.settings = settings or get_settings()
        self._forced = engine
        self._registry = registry
        self._queues = queues
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    # -- routing --------------------------------------------------------------------------

    def _route(self) -> Iterator[tuple[str, str]]:
        """(engine name, reason) in the order engines are tried."""
        if self._forced is not None:
            yield self._forced.name, "forced"
            return
        choice = self.settings.engine
        if choice != "auto":
            yield choice, f"JOBKIT_ENGINE={choice}"
        elif self.settings.use_rq:
            yield "rq", "rq"
            yield "temporal", "fallback"
        else:
            yield "temporal", "rq-disabled"

    @property
    def falls_back(self) -> bool:
        """Whether a job can move on to another engine: only then does the dispatcher ask
        an engine whether it can take a job, or confirm that a worker picked it up. A
        forced engine takes every job (it waits in the queue for a worker)."""
        return self._forced is None and self.settings.engine == "auto"

    def _built(self, name: str) -> Engine | None:
        """The engine `name` if it is built already; a read, no lock taken."""
        if self._forced is not None and name == self._forced.name:
            return self._forced
        # A third-party engine is loaded as 'module:Class' but records jobs under its
        # own `name`: find it by either.
        return self._engines.get(name) or next(
            (e for e in list(self._engines.values()) if e.name == name), None
        )

    def engine(self, name: str) -> Engine:
        """The engine `name`, built on first use and kept."""
        built = self._built(name)
        if built is not None:
            return built
        with self._lock:
            engine = self._built(name)
            if engine is None:
                engine = self._engines[name] = load_engine(name, self.settings)
            return engine

    def _known_engines(self) -> Iterator[Engine]:
        for name, _ in self._route():
            try:
                yield self.engine(name)
            except ConfigurationError:
                continue

    # -- dispatch -------------------------------------------------------------------------

    def prepare(
        self,
        job: JobDefinition[Any, Any] | str,
        payload: Any = None,
        *,
        delay: Duration | None = None,
        at: datetime | None = None,
        queue: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobRequest:
        """Validate everything about a dispatch before any engine sees it: the payload's
        fields, that it is JSON within the size limit every engine shares, and the other
        arguments. A mistake here is the caller's: it raises a specific error and never
        counts against an engine's health (no circuit breaker opens for it)."""
        definition = job if isinstance(job, JobDefinition) else self._registry.get(job)
        value = definition.validate_payload(payload)
        queue_name = queue or definition.queue
        self._queues.get(queue_name)
        return JobRequest(
            job_id=self._job_id(definition.name, idempotency_key),
            job_name=definition.name,
            payload=self._payload(definition, value),
            queue=queue_name,
            max_attempts=definition.retry.attempts,
            delay=checked_delay(delay, at),
            run_at=None if at is None else checked_at(at),
            idempotency_key=idempotency_key,
        )

    def _payload(self, definition: JobDefinition[Any, Any], value: Any) -> Any:
        """The payload as JSON within the size limit. Not JSON — an object, bytes that are
        not text, a NaN or infinity (which pydantic would quietly turn into null) — is the
        caller's mistake, a `PayloadValidationError`."""
        what = f"the payload of job {definition.name!r}"
        try:
            if has_non_finite(value):
                raise StepError(f"{what} is not JSON: it holds NaN or infinity")
            return encode(definition.dump_payload(value), what, self.settings.max_payload_bytes)
        except (StepError, ValueError, TypeError, PydanticSerializationError) as exc:
            if isinstance(exc, PayloadTooLargeError):
                raise
            why = str(exc) if isinstance(exc, StepError) else f"{what} is not JSON: {exc}"
            raise PayloadValidationError(
                definition.name, [{"loc": (), "msg": f"{why}; send JSON data"}]
            ) from None

    @staticmethod
    def _job_id(job_name: str, idempotency_key: str | None) -> str:
        if idempotency_key is None:
            return uuid.uuid4().hex
        if not isinstance(idempotency_key, str) or not idempotency_key.strip():
            raise DispatchArgumentError(
                "idempotency_key",
                f"got {idempotency_key!r}; use a non-empty string that names the operation "
                "(e.g. f'welcome-{user_id}'), or leave it out",
            )
        return idempotent_job_id(job_name, idempotency_key)

    def _candidates(
        self, request: JobRequest, causes: dict[str, str], copies: Copies
    ) -> Iterator[tuple[str, Engine, JobRequest]]:
        """Engines that say they can take `request` now (by route name), each with the
        request it gets; why each other engine cannot, in `causes`; which may hold a copy
        of the job anyway, in `copies`."""
        for name, reason in self._route():
            found = self._eligible(name, reason, request, causes, copies)
            why = found[0].availability(request) if found and self.falls_back else None
            if found is not None and why is None:
                yield name, *found
            elif why is not None:
                causes[name] = why

    async def _acandidates(
        self, request: JobRequest, causes: dict[str, str], copies: Copies
    ) -> AsyncIterator[tuple[str, Engine, JobRequest]]:
        """`_candidates` that never blocks the running loop: an engine is built (imported,
        its client made) in a thread, and so is an availability check that must ask a
        server (`aavailability`)."""
        for name, reason in self._route():
            args = (name, reason, request, causes, copies)
            if self._built(name) is not None:
                found = self._eligible(*args)
            else:
                found = await asyncio.to_thread(self._eligible, *args)
            why = await aavailability(found[0], request) if found and self.falls_back else None
            if found is not None and why is None:
                yield name, *found
            elif why is not None:
                causes[name] = why

    def _eligible(
        self, name: str, reason: str, request: JobRequest, causes: dict[str, str], copies: Copies
    ) -> tuple[Engine, JobRequest] | None:
        """The engine `name` and the request it gets, if it exists and can honour it. A
        fallback engine's reason is the cause that sent the job past the engine before;
        its `fence` and `hand_over`, the engines before that may hold a copy (`copies`)."""
        try:
            engine = self.engine(name)
        except ConfigurationError as exc:
            causes[name] = str(exc)
            return None
        fence, earlier = copies.fence(), copies.hand_over()
        if request.idempotency_key is not None:
            copies.earlier.add(name)
        if (request.delay or request.run_at) and not engine.supports_delay:
            causes[name] = "does not support delay= / at="
            return None
        if reason == "fallback" and causes:
            reason = list(causes.values())[-1]
        return engine, replace(request, reason=reason, fence=fence, hand_over=earlier)

    def _pickup_timeout(self, engine: Engine, request: JobRequest, per_call: Any) -> float | None:
        timeout = self.settings.pickup_timeout if per_call is _SETTING else per_call
        if timeout is None or not self.falls_back or not engine.supports_pickup_confirmation:
            return None
        return None if (request.delay or request.run_at) else timeout

    def dispatch(
        self,
        job: JobDefinition[Any, Any] | str,
        payload: Any = None,
        *,
        pickup_timeout: float | object | None = _SETTING,
        **options: Any,
    ) -> Dispatched:
        request = self.prepare(job, payload, **options)
        causes: dict[str, str] = {}
        copies = Copies()
        for name, engine, routed in self._candidates(request, causes, copies):
            if routed.hand_over and (held := held_before(routed, self.engine)):
                return _already(routed, held)
            try:
                created = engine.enqueue(routed)
            except JobMovedError as moved:
                return Dispatched(routed.job_id, moved.engine, moved.reason, created=False)
            except EngineUnavailableError as exc:
                missed(name, exc, causes, copies)
                continue
            timeout = self._pickup_timeout(engine, routed, pickup_timeout)
            if created and timeout is not None and not engine.confirm_pickup(routed, timeout):  # type: ignore[attr-defined]
                causes[name] = "pickup-timeout"
                continue
            settle = created and (routed.fence or routed.hand_over)
            if settle and (held := hand_over(routed, engine.name, self.engine)):
                return _already(routed, held)
            return Dispatched(routed.job_id, engine.name, routed.reason, created)
        raise DispatchError(request.job_name, causes)

    async def adispatch(
        self,
        job: JobDefinition[Any, Any] | str,
        payload: Any = None,
        *,
        pickup_timeout: float | object | None = _SETTING,
        **options: Any,
    ) -> Dispatched:
        request = self.prepare(job, payload, **options)
        causes: dict[str, str] = {}
        copies = Copies()
        async for name, engine, routed in self._acandidates(request, causes, copies):
            if routed.hand_over and (
                held := await asyncio.to_thread(held_before, routed, self.engine)
            ):
                return _already(routed, held)
            try:
                created = await engine.aenqueue(routed)
            except JobMovedError as moved:
                return Dispatched(routed.job_id, moved.engine, moved.reason, created=False)
            except EngineUnavailableError as exc:
                missed(name, exc, causes, copies)
                continue
            timeout = self._pickup_timeout(engine, routed, pickup_timeout)
            if created and timeout is not None:
                taken = await asyncio.to_thread(engine.confirm_pickup, routed, timeout)  # type: ignore[attr-defined]
                if not taken:
                    causes[name] = "pickup-timeout"
                    continue
            settle = created and (routed.fence or routed.hand_over)
            if settle and (
                held := await asyncio.to_thread(hand_over, routed, engine.name, self.engine)
            ):
                return _already(routed, held)
            return Dispatched(routed.job_id, engine.name, routed.reason, created)
        raise DispatchError(request.job_name, causes)

    # -- lookup ---------------------------------------------------------------------------

    def _decoded(self, info: JobInfo) -> JobInfo:
        """The result in its annotated type, when this process knows the job."""
        if info.result is None or info.job_name not in self._registry:
            return info
        return replace(info, result=self._registry.get(info.job_name).load_result(info.result))

    def _locate(self, job_id: str) -> tuple[Engine, JobInfo]:
        """The engine that has the job. An engine that cannot answer is skipped; if no
        other engine has the job, its error is raised instead of "not found"."""
        unavailable: EngineUnavailableError | None = None
        for engine in self._known_engines():
            try:
                info = engine.get(job_id)
            except EngineUnavailableError as exc:
                unavailable = unavailable or exc
                continue
            if info is not None:
                return engine, info
        raise unavailable or JobNotFoundError(job_id)

    def get(self, job_id: str) -> JobInfo:
        return self._decoded(self._locate(job_id)[1])

    async def aget(self, job_id: str) -> JobInfo:
        return self._decoded((await asyncio.to_thread(self._locate, job_id))[1])

    def cancel(self, job_id: str) -> bool:
        return self._locate(job_id)[0].cancel(job_id)

    async def acancel(self, job_id: str) -> bool:
        engine, _ = await asyncio.to_thread(self._locate, job_id)
        return await engine.acancel(job_id)

    def close(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.close()


_default: Dispatcher | None = None
_default_lock = threading.Lock()


def get_dispatcher() -> Dispatcher:
    """The process-wide dispatcher, built from settings on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Dispatcher()
    return _default


async def aget_dispatcher() -> Dispatcher:
    """`get_dispatcher` for a running loop: the first call, which reads the settings,
    builds the dispatcher in a thread."""
    return _default if _default is not None else await asyncio.to_thread(get_dispatcher)


def set_dispatcher(dispatcher: Dispatcher | None) -> Dispatcher | None:
    """Replace the process-wide dispatcher; returns the previous one."""
    global _default
    with _default_lock:
        previous, _default = _default, dispatcher
    return previous


def _already(request: JobRequest, held: Fenced) -> Dispatched:
    """The job that another engine holds for this key: the answer, created earlier."""
    return Dispatched(request.job_id, held.engine, held.reason, created=False)
