"""`@job`: a handler, its payload model, and how it is to be run."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from jobkit.durations import Duration, to_timedelta
from jobkit.errors import JobDefinitionError, PayloadValidationError
from jobkit_engine._codec import adapter_for, to_json
from jobkit_engine._retry import Retry

if TYPE_CHECKING:
    from jobkit_engine._context import JobContext
    from jobkit_engine._registry import JobRegistry

P = TypeVar("P")
R = TypeVar("R")

Handler = Callable[["JobContext", P], Awaitable[R]]


@dataclass(frozen=True, eq=False)
class JobDefinition(Generic[P, R]):
    """A registered job. Calling it calls the handler, so a job can be unit-tested directly."""

    name: str
    handler: Callable[..., Awaitable[R]]
    queue: str = "default"
    retry: Retry = field(default_factory=Retry)
    timeout: timedelta | None = None
    payload_type: Any = None
    result_type: Any = None

    @property
    def ref(self) -> str:
        """`module:qualname` of the handler, to tell two registrations apart."""
        return f"{self.handler.__module__}:{self.handler.__qualname__}"

    @property
    def _payload_adapter(self) -> TypeAdapter[Any] | None:
        return None if self.payload_type is None else adapter_for(self.payload_type)

    def validate_payload(self, payload: Any) -> P:
        """`payload` (a dict, JSON data or a model) as the job's payload type.

        Raises `PayloadValidationError` naming the job and each bad field.
        """
        adapter = self._payload_adapter
        if adapter is None:
            if payload not in (None, {}):
                raise PayloadValidationError(
                    self.name, [{"loc": (), "msg": "this job takes no payload"}]
                )
            return typing.cast(P, None)
        if isinstance(payload, BaseModel) and not isinstance(payload, self.payload_type):
            payload = payload.model_dump(mode="json")
        try:
            return adapter.validate_python(payload)
        except ValidationError as exc:
            raise PayloadValidationError(self.name, exc.errors(include_url=False)) from None

    def dump_payload(self, payload: P) -> Any:
        adapter = self._payload_adapter
        return None if adapter is None else adapter.dump_python(payload, mode="json")

    def dump_result(self, result: R) -> Any:
        return to_json(result)

    def load_result(self, data: Any) -> R:
        """Stored JSON result → the annotated return type (a model comes back as a model)."""
        if data is None or self.result_type in (None, Any):
            return data
        return adapter_for(self.result_type).validate_python(data)

    async def __call__(self, ctx: JobContext, payload: P) -> R:
        if self.payload_type is None:
            return await self.handler(ctx)
        return await self.handler(ctx, payload)


def job(
    name: str,
    *,
    queue: str = "default",
    retry: Retry | int | None = None,
    timeout: Duration | None = None,
    registry: JobRegistry | None = None,
) -> Callable[[Callable[..., Awaitable[R]]], JobDefinition[Any, R]]:
    """Register an `async def handler(ctx, payload: Model) -> Result` as job `name`.

    The payload model is the annotation of the handler's second parameter (a handler may
    take only `ctx`). `retry` is a `Retry` or a number of attempts; `timeout` bounds each
    attempt (default: the queue's `default_timeout`).
    """
    if not name or not isinstance(name, str):
        raise JobDefinitionError(f"a job name must be a non-empty string, got {name!r}")
    policy = Retry(attempts=retry) if isinstance(retry, int) else (retry or Retry())

    def decorate(handler: Callable[..., Awaitable[R]]) -> JobDefinition[Any, R]:
        payload_type, result_type = _signature_types(name, handler)
        definition: JobDefinition[Any, R] = JobDefinition(
            name=name,
            handler=handler,
            queue=queue,
            retry=policy,
            timeout=None if timeout is None else to_timedelta(timeout),
            payload_type=payload_type,
            result_type=result_type,
        )
        from jobkit_engine._registry import default_registry

        (registry if registry is not None else default_registry).register(definition)
        return definition

    return decorate


def _signature_types(name: str, handler: Callable[..., Any]) -> tuple[Any, Any]:
    if not inspect.iscoroutinefunction(handler):
        raise JobDefinitionError(
            f"job {name!r}: the handler {handler.__qualname__} must be an 'async def'"
        )
    params = list(inspect.signature(handler).parameters.values())
    if len(params) not in (1, 2):
        raise JobDefinitionError(
            f"job {name!r}: the handler must take (ctx) or (ctx, payload), "
            f"not {len(params)} parameters"
        )
    try:
        hints = typing.get_type_hints(handler)
    except Exception as exc:
        raise JobDefinitionError(f"job {name!r}: cannot resolve annotations: {exc}") from exc
    payload_type = None
    if len(params) == 2:
        payload_type = hints.get(params[1].name)
        if payload_type is None:
            raise JobDefinitionError(
                f"job {name!r}: annotate the payload parameter {params[1].name!r} with its "
                "pydantic model, e.g. 'payload: ResolveEpisode'"
            )
        try:
            adapter_for(payload_type)
        except Exception as exc:
            raise JobDefinitionError(
                f"job {name!r}: payload type {payload_type!r} is not supported: {exc}"
            ) from exc
    result_type = hints.get("return")
    return payload_type, (None if result_type is type(None) else result_type)
