"""The dispatcher: routing, fallback seam, idempotent ids, async twins."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
import redis

from jobkit import JobkitSettings
from jobkit.connection import get_redis
from jobkit.errors import (
    DispatchArgumentError,
    DispatchError,
    EngineUnavailableError,
    PayloadTooLargeError,
    PayloadValidationError,
    UnknownQueueError,
)
from jobkit_dispatch import (
    Dispatcher,
    JobRequest,
    acancel_job,
    adispatch_job,
    aget_job,
    dispatch_job,
    idempotent_job_id,
)
from jobkit_dispatch.engines import BUILTIN_ENGINES
from jobkit_dispatch.engines.inline import InlineEngine
from jobkit_dispatch.engines.rq import RQEngine
from jobkit_dispatch.testing import RedisServer, use_engine, wait_for_job
from jobkit_engine import JobStatus
from tests.jobs import Greeted, greet, loose


class DownEngine(InlineEngine):
    name: ClassVar[str] = "down"

    def enqueue(self, request: JobRequest) -> bool:
        raise EngineUnavailableError("server at 127.0.0.1:1 refused the connection")


class UpEngine(InlineEngine):
    name: ClassVar[str] = "up"


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUILTIN_ENGINES, "rq", f"{__name__}:DownEngine")
    monkeypatch.setitem(BUILTIN_ENGINES, "temporal", f"{__name__}:UpEngine")


@pytest.mark.usefixtures("engines")
def test_auto_falls_back_to_the_next_engine() -> None:
    dispatcher = Dispatcher(settings=JobkitSettings(engine="auto"))
    try:
        d = dispatcher.dispatch(greet, {"name": "ada"})
        assert d.engine == "up"
        assert d.reason == "server at 127.0.0.1:1 refused the connection"  # why not RQ
        assert dispatcher.get(d.job_id).reason == d.reason
    finally:
        dispatcher.close()


@pytest.mark.usefixtures("engines")
def test_rq_disabled_goes_straight_to_temporal() -> None:
    dispatcher = Dispatcher(settings=JobkitSettings(engine="auto", use_rq=False))
    try:
        assert dispatcher.dispatch(greet, {"name": "ada"}).reason == "rq-disabled"
    finally:
        dispatcher.close()


def test_no_engine_raises_dispatch_error_naming_each_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUILTIN_ENGINES, "rq", f"{__name__}:DownEngine")
    monkeypatch.setitem(BUILTIN_ENGINES, "temporal", "jobkit_nowhere.engine:Missing")
    dispatcher = Dispatcher(settings=JobkitSettings(engine="auto"))
    with pytest.raises(DispatchError) as caught:
        dispatcher.dispatch(greet, {"name": "ada"})
    assert set(caught.value.causes) == {"rq", "temporal"}
    assert "refused the connection" in str(caught.value)
    assert "jobkit_nowhere" in str(caught.value)
    dispatcher.close()


def test_a_third_party_engine_is_named_by_import_path() -> None:
    dispatcher = Dispatcher(settings=JobkitSettings(engine=f"{__name__}:UpEngine"))
    try:
        d = dispatcher.dispatch(greet, {"name": "ada"})
        assert (d.engine, d.reason) == ("up", f"JOBKIT_ENGINE={__name__}:UpEngine")
        # Its jobs say engine "up": that name finds the engine loaded by import path.
        assert dispatcher.engine("up") is dispatcher.engine(f"{__name__}:UpEngine")
    finally:
        dispatcher.close()


def test_idempotent_ids_are_deterministic_and_safe_for_every_engine() -> None:
    job_id = idempotent_job_id("emails.welcome", "user-42")
    assert job_id == idempotent_job_id("emails.welcome", "user-42")
    assert job_id != idempotent_job_id("emails.other", "user-42")
    assert job_id.isalnum()


def test_delay_and_at_are_exclusive_and_at_must_be_aware(jobkit_inline: InlineEngine) -> None:
    from datetime import datetime

    with pytest.raises(ValueError, match="either"):
        dispatch_job(greet, {"name": "a"}, delay=1, at=datetime.now().astimezone())
    with pytest.raises(ValueError, match="naive datetime"):
        dispatch_job(greet, {"name": "a"}, at=datetime(2030, 1, 1))


def test_unknown_queue_is_refused_before_enqueue(jobkit_inline: InlineEngine) -> None:
    with pytest.raises(UnknownQueueError):
        dispatch_job(greet, {"name": "a"}, queue="nope")


async def test_async_twins(jobkit_inline: InlineEngine) -> None:
    d = await adispatch_job(greet, {"name": "ada"})
    info = await aget_job(d.job_id)
    assert info.job_id == d.job_id
    delayed = await adispatch_job(greet, {"name": "later"}, delay=60)
    assert await acancel_job(delayed.job_id) is True
    assert (await aget_job(delayed.job_id)).status == JobStatus.CANCELLED


def test_result_is_typed_and_sync_steps_run_off_the_event_loop() -> None:
    engine = InlineEngine()
    try:
        with use_engine(engine):
            info = wait_for_job(dispatch_job(greet, {"name": "ada"}).job_id)
        assert info.result == Greeted(text="hello ada", thread="jobkit-inline")
    finally:
        engine.close()


BAD_DISPATCHES = [
    ({"payload": {"data": object()}}, PayloadValidationError, "not JSON"),
    ({"payload": {"data": b"caf\xe9"}}, PayloadValidationError, "not JSON"),
    ({"payload": {"data": float("nan")}}, PayloadValidationError, "not JSON"),
    ({"payload": {"data": float("inf")}}, PayloadValidationError, "not JSON"),
    ({"at": datetime(2030, 1, 1)}, DispatchArgumentError, r"at=.*naive"),
    ({"delay": -5}, DispatchArgumentError, r"delay=.*zero or more"),
    ({"delay": 5, "at": datetime(2030, 1, 1, tzinfo=UTC)}, DispatchArgumentError, "not both"),
    ({"idempotency_key": ""}, DispatchArgumentError, "idempotency_key"),
    ({"idempotency_key": "  "}, DispatchArgumentError, "idempotency_key"),
    ({"payload": {"data": "x" * 2_000_000}}, PayloadTooLargeError, "payload of job"),
]


@pytest.mark.parametrize(("arguments", "error", "message"), BAD_DISPATCHES)
def test_bad_input_at_dispatch_is_a_specific_error_and_writes_nothing(
    jobkit_redis_server: RedisServer, arguments: dict[str, Any], error: type, message: str
) -> None:
    client = redis.Redis.from_url(jobkit_redis_server.url)
    client.flushdb()
    settings = JobkitSettings(redis_url=jobkit_redis_server.url)
    engine = RQEngine(get_redis(settings=settings), settings=settings)
    arguments = {"payload": {"data": 1}, **arguments}
    payload = arguments.pop("payload")
    with use_engine(engine), pytest.raises(error, match=message):
        dispatch_job(loose, payload, **arguments)
    assert client.dbsize() == 0  # nothing was written
    assert engine.breaker.allow()  # and Redis is not blamed for the caller's mistake
    client.close()


async def test_the_sync_calls_warn_once_inside_an_event_loop(
    jobkit_inline: InlineEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    from jobkit_dispatch import _api, cancel_job, get_job

    monkeypatch.setattr(_api, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = dispatch_job(greet, {"name": "a"})
        dispatch_job(greet, {"name": "b"})
    said = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(said) == 1, [str(w.message) for w in said]  # once, not per call
    assert "await adispatch_job(" in str(said[0].message)
    assert said[0].filename == __file__  # it points at the caller
    with pytest.warns(RuntimeWarning, match=r"await aget_job\("):
        get_job(d.job_id)
    with pytest.warns(RuntimeWarning, match=r"await acancel_job\("):
        cancel_job(d.job_id)


def test_the_sync_calls_do_not_warn_outside_an_event_loop(
    jobkit_inline: InlineEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    from jobkit_dispatch import _api

    monkeypatch.setattr(_api, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        dispatch_job(greet, {"name": "a"})
