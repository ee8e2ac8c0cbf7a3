"""`@job`, the registry and the retry policy."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from pydantic import BaseModel

from jobkit_engine import (
    DuplicateJobError,
    JobContext,
    JobDefinitionError,
    JobRegistry,
    PayloadValidationError,
    Retry,
    UnknownJobError,
    job,
)


class Order(BaseModel):
    order_id: int
    note: str = ""


@pytest.fixture
def registry() -> JobRegistry:
    return JobRegistry()


def test_payload_model_comes_from_the_annotation(registry: JobRegistry) -> None:
    @job("orders.ship", queue="data_sync", retry=4, timeout=30, registry=registry)
    async def ship(ctx: JobContext, payload: Order) -> list[int]:
        return [payload.order_id]

    definition = registry.get("orders.ship")
    assert definition is ship
    assert (definition.payload_type, definition.result_type) == (Order, list[int])
    assert (definition.queue, definition.retry.attempts) == ("data_sync", 4)
    assert definition.timeout == timedelta(seconds=30)
    assert definition.validate_payload({"order_id": "7"}) == Order(order_id=7)


def test_a_bad_payload_names_the_job_and_the_field(registry: JobRegistry) -> None:
    @job("orders.cancel", registry=registry)
    async def cancel(ctx: JobContext, payload: Order) -> None: ...

    with pytest.raises(PayloadValidationError) as caught:
        cancel.validate_payload({"order_id": "seven"})
    assert "orders.cancel" in str(caught.value)
    assert "order_id" in str(caught.value)
    assert caught.value.errors[0]["loc"] == ("order_id",)


def test_a_job_without_payload_refuses_one(registry: JobRegistry) -> None:
    @job("tick", registry=registry)
    async def tick(ctx: JobContext) -> None: ...

    assert tick.validate_payload(None) is None
    with pytest.raises(PayloadValidationError, match="takes no payload"):
        tick.validate_payload({"x": 1})


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def handler(ctx, payload: Order): ...", "async def"),
        ("async def handler(ctx, payload): ...", "annotate the payload"),
        ("async def handler(ctx, a: Order, b: Order): ...", "parameters"),
    ],
)
def test_handlers_that_cannot_work_are_refused(
    registry: JobRegistry, source: str, message: str
) -> None:
    namespace: dict[str, object] = {"Order": Order}
    exec(source, namespace)
    with pytest.raises(JobDefinitionError, match=message):
        job("bad", registry=registry)(namespace["handler"])  # type: ignore[arg-type]
    assert "bad" not in registry


def test_two_handlers_cannot_share_a_name(registry: JobRegistry) -> None:
    async def first(ctx: JobContext) -> None: ...

    async def second(ctx: JobContext) -> None: ...

    job("same", registry=registry)(first)
    job("same", registry=registry)(first)  # re-importing the same handler is fine
    with pytest.raises(DuplicateJobError, match="same"):
        job("same", registry=registry)(second)


def test_unknown_job_lists_what_is_registered(registry: JobRegistry) -> None:
    @job("known", registry=registry)
    async def known(ctx: JobContext) -> None: ...

    with pytest.raises(UnknownJobError, match="known"):
        registry.get("unknown")


def test_calling_a_definition_calls_the_handler(registry: JobRegistry) -> None:
    import asyncio

    @job("double", registry=registry)
    async def double(ctx: JobContext, payload: Order) -> int:
        return payload.order_id * 2

    assert asyncio.run(double(None, Order(order_id=21))) == 42  # type: ignore[arg-type]


def test_retry_backoff_is_exponential_capped_and_jittered() -> None:
    policy = Retry(attempts=6, backoff=3.0, initial_delay=1, max_delay=20, jitter=0.0)
    delays = [policy.delay_after(n) for n in range(1, 7)]
    assert delays == [timedelta(seconds=s) for s in (1, 3, 9, 20, 20)] + [None]

    jittered = Retry(attempts=3, initial_delay=10, jitter=0.5)
    rng = random.Random(7)
    samples = [jittered.delay_after(1, rng).total_seconds() for _ in range(200)]  # type: ignore[union-attr]
    assert all(5.0 <= s <= 10.0 for s in samples)
    assert max(samples) - min(samples) > 3  # the jitter really spreads retries


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"backoff": 0.5}, {"jitter": 1.5}])
def test_retry_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"Retry\("):
        Retry(**kwargs)  # type: ignore[arg-type]
