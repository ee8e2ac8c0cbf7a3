"""A hung server costs the first call its timeout, and nothing after that.

A hung server is a loopback port that accepts connections and never answers
(`HungServer`); it counts the connections it accepted, so "no later call tried to reach
it" is checked by counting, not by timing. Recovery runs against a real Temporal dev
server started on the hung server's port.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

pytest.importorskip("temporalio")

from jobkit import JobkitSettings
from jobkit.circuit import CircuitBreaker
from jobkit.errors import DispatchError, EngineUnavailableError
from jobkit_dispatch import Dispatcher, idempotent_job_id
from jobkit_dispatch.cron import Scheduler, ScheduleRegistry, fire_key, schedule
from jobkit_dispatch.engines.temporal import TemporalEngine
from jobkit_dispatch.engines.temporal._connection import Connection
from jobkit_dispatch.engines.temporal._loop import LoopThread
from jobkit_dispatch.testing import RedisServer
from jobkit_dispatch.testing.hung_server import HungServer
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_dispatch.testing.temporal_server import TemporalDevServer
from tests import rq_jobs
from tests.cron_jobs import fire_payload, record_fire
from tests.waiting import eventually

NO_ANSWER = r"cannot connect to Temporal at 127\.0\.0\.1:\d+: TimeoutError: no answer within"


@pytest.fixture
def hung() -> Iterator[HungServer]:
    with HungServer() as server:
        yield server


def test_a_hung_temporal_costs_the_first_calls_one_connect_and_later_calls_nothing(
    hung: HungServer, tmp_path: Path
) -> None:
    engine = TemporalEngine(hung.address, connect_timeout=0.5, circuit_cool_down=60)
    request = Dispatcher(engine).prepare(rq_jobs.ok, {"workdir": str(tmp_path)})
    try:
        with ThreadPoolExecutor(4) as pool:  # concurrent first calls share one attempt
            errors = list(pool.map(lambda _: _error_of(engine.get, "job"), range(4)))
        assert all(isinstance(e, EngineUnavailableError) for e in errors), errors
        assert all(e.args[0].endswith("no answer within 0.5 s") for e in errors), errors
        assert hung.connections == 1

        why = engine.availability(request)  # from memory, no connection
        assert why is not None
        assert why.endswith("TimeoutError: no answer within 0.5 s (circuit open)")
        for call, arg in [(engine.enqueue, request), (engine.get, "job"), (engine.cancel, "job")]:
            with pytest.raises(EngineUnavailableError, match=NO_ANSWER + r" 0\.5 s \(circuit"):
                call(arg)  # type: ignore[operator]
        with pytest.raises(EngineUnavailableError, match="circuit open"):
            asyncio.run(engine.aget("job"))
        assert hung.connections == 1  # none of the later calls tried to connect
    finally:
        engine.close()


def _error_of(call: object, *args: object) -> BaseException | None:
    try:
        call(*args)  # type: ignore[operator]
    except BaseException as exc:
        return exc
    return None


def test_a_recovered_temporal_is_used_again_after_the_cool_down(tmp_path: Path) -> None:
    hung = HungServer()
    engine = TemporalEngine(hung.address, connect_timeout=0.5, circuit_cool_down=0.5)
    request = Dispatcher(engine).prepare(rq_jobs.ok, {"workdir": str(tmp_path)})
    try:
        with pytest.raises(EngineUnavailableError, match=NO_ANSWER):
            engine.enqueue(request)
        hung.close()
        with TemporalDevServer(port=hung.port):  # the same address answers now

            def enqueued() -> bool:  # each call either fails at once or enqueues
                return (
                    engine.availability(request) is None
                    and _error_of(engine.enqueue, request) is None
                )

            eventually(enqueued, timeout=20)
            assert not engine.breaker.is_open
            assert engine.get(request.job_id) is not None
    finally:
        engine.close()
        hung.close()


def test_a_temporal_that_stops_answering_once_connected_costs_one_rpc_timeout() -> None:
    with TemporalDevServer() as server:
        engine = TemporalEngine(
            server.address, connect_timeout=0.5, rpc_timeout=1.0, circuit_cool_down=0.5
        )
        try:
            assert engine.get("job") is None  # connected, and answering
            with server.paused():
                with pytest.raises(EngineUnavailableError, match=r"is unavailable: RPCError"):
                    engine.get("job")
                for _ in range(3):
                    with pytest.raises(EngineUnavailableError, match=r"\(circuit open\)$"):
                        engine.get("job")
            eventually(lambda: _error_of(engine.get, "job") is None, timeout=20)
            assert not engine.breaker.is_open
        finally:
            engine.close()


def test_a_call_that_times_out_while_others_get_answers_leaves_the_circuit_closed() -> None:
    """Temporal busy (some calls time out, others are answered) is not Temporal gone."""
    loop = LoopThread("test-breaker")
    connection = Connection(
        "127.0.0.1:1", "default", loop, connect_timeout=1, rpc_timeout=1, cool_down=60
    )
    timed_out = EngineUnavailableError("Temporal at 127.0.0.1:1 is unavailable: deadline")

    def times_out(while_another_is_answered: bool) -> None:
        with connection.call():
            if while_another_is_answered:
                with connection.call():
                    pass
            raise timed_out

    with pytest.raises(EngineUnavailableError):
        times_out(while_another_is_answered=True)
    assert not connection.breaker.is_open
    with pytest.raises(EngineUnavailableError):
        times_out(while_another_is_answered=False)
    assert connection.breaker.is_open
    assert connection.breaker.last_failure.endswith("unavailable: deadline")
    loop.stop()


def test_a_probe_that_never_reports_does_not_keep_the_circuit_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("jobkit.circuit.time.monotonic", lambda: now[0])
    breaker = CircuitBreaker(5.0, probe_timeout=7.0)
    breaker.failure("refused")
    assert not breaker.allow()
    now[0] += 5
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # the others skip while it runs
    now[0] += 7  # it never reported: lost
    assert breaker.allow()
    breaker.success()
    assert breaker.allow() and breaker.allow()


def test_both_servers_hung_the_first_dispatch_fails_naming_both_later_ones_reach_neither(
    tmp_path: Path,
) -> None:
    with HungServer() as hung_redis, HungServer() as hung_temporal:
        settings = JobkitSettings(
            redis_url=hung_redis.url,  # type: ignore[arg-type]
            temporal_address=hung_temporal.address,
            circuit_cool_down=60,
        )
        dispatcher = Dispatcher(settings=settings)
        payload = {"workdir": str(tmp_path)}
        try:
            with pytest.raises(DispatchError) as first:
                dispatcher.dispatch(rq_jobs.ok, payload)
            causes = first.value.causes
            assert set(causes) == {"rq", "temporal"}
            assert "TimeoutError: Timeout" in causes["rq"], causes
            assert causes["temporal"].endswith("TimeoutError: no answer within 2 s"), causes
            seen = (hung_redis.connections, hung_temporal.connections)
            for n in range(3):
                with pytest.raises(DispatchError) as later:
                    dispatcher.dispatch(rq_jobs.ok, payload, idempotency_key=f"k{n}")
                assert all(c.endswith("(circuit open)") for c in later.value.causes.values())
            with pytest.raises(EngineUnavailableError, match="circuit open"):
                dispatcher.get("some-job")
            with pytest.raises(EngineUnavailableError, match="circuit open"):
                dispatcher.cancel("some-job")
            assert (hung_redis.connections, hung_temporal.connections) == seen
        finally:
            dispatcher.close()


@pytest.mark.slow
def test_cron_keeps_time_on_rq_while_temporal_hangs(
    jobkit_redis_server: RedisServer, hung: HungServer, tmp_path: Path
) -> None:
    """Each fire's idempotency key is settled by RQ's enqueue script, which takes the job:
    Temporal is never asked, so no fire waits for it and none falls behind."""
    url = jobkit_redis_server.url
    redis.Redis.from_url(url).flushdb()
    registry = ScheduleRegistry()
    payload = fire_payload("hung-tick", str(tmp_path))
    schedule("hung-tick", every=1, job=record_fire, payload=payload, registry=registry)
    settings = JobkitSettings(redis_url=url, temporal_address=hung.address)  # type: ignore[arg-type]
    dispatcher = Dispatcher(settings=settings)
    worker = WorkerProcess(url, ["cron-test"], ["tests.cron_jobs"], log_path=tmp_path / "w.log")
    stop = threading.Event()
    with worker.start():
        scheduler = Scheduler(registry, redis=redis.Redis.from_url(url), dispatcher=dispatcher)
        started = datetime.now(UTC)
        thread = threading.Thread(target=scheduler.run, args=(stop,), kwargs={"poll": 0.2})
        thread.start()
        try:
            eventually(lambda: datetime.now(UTC) > started + timedelta(seconds=12), 20)
        finally:
            stop.set()
            thread.join(10)
    ended = datetime.now(UTC) - timedelta(seconds=1)  # the last fire may be under way
    due = list(registry.get("hung-tick").fire_times(started, ended))
    lateness = {}
    for when in due:
        job_id = idempotent_job_id(record_fire.name, fire_key("hung-tick", when))
        info = dispatcher.engine("rq").get(job_id)
        assert info is not None, f"fire {when} was never dispatched"
        assert info.engine == "rq" and info.created_at is not None
        lateness[when] = (info.created_at - when).total_seconds()
    dispatcher.close()
    assert len(due) >= 10
    assert hung.connections == 0  # Temporal was never asked
    late = {when: lag for when, lag in lateness.items() if lag > 0.5}
    assert not late, late
