"""The dispatch flow on real Redis: health, live workers, pickup confirmation, breaker.

The fallback engine here is an in-process stand-in registered under the name "temporal",
so these tests isolate the RQ side of the flow; the real Temporal fallback is tested in
test_fallback_temporal.py.
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import pytest
import redis

from jobkit import JobkitSettings
from jobkit.errors import DispatchError
from jobkit_dispatch import Dispatcher, set_dispatcher
from jobkit_dispatch.conformance._files import count, open_gate
from jobkit_dispatch.engines import BUILTIN_ENGINES
from jobkit_dispatch.engines.inline import InlineEngine
from jobkit_dispatch.testing import RedisServer, wait_for_job
from jobkit_dispatch.testing.redis_server import free_port
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_engine import JobStatus
from tests import rq_jobs

FAST = {"JOBKIT_WORKER_HEARTBEAT": "0.3"}


class StandInTemporal(InlineEngine):
    name: ClassVar[str] = "temporal"


@pytest.fixture(autouse=True)
def _stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BUILTIN_ENGINES, "temporal", f"{__name__}:StandInTemporal")


@pytest.fixture
def client(jobkit_redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(jobkit_redis_server.url)
    client.flushdb()
    yield client
    client.close()


def make_dispatcher(url: str, **settings: object) -> Dispatcher:
    values = {"redis_url": url, "worker_heartbeat": 0.3, "worker_check_ttl": 0.0, **settings}
    return Dispatcher(settings=JobkitSettings(**values))  # type: ignore[arg-type]


@pytest.fixture
def dispatcher(jobkit_redis_server: RedisServer, client: redis.Redis) -> Iterator[Dispatcher]:
    """The dispatcher under test, also behind get_job / wait_for_job."""
    d = make_dispatcher(jobkit_redis_server.url)
    previous = set_dispatcher(d)
    yield d
    set_dispatcher(previous)
    d.close()


def start_worker(server: RedisServer, queue: str, tmp_path: Path) -> WorkerProcess:
    return WorkerProcess(
        server.url,
        [queue],
        ["tests.rq_jobs"],
        env=FAST,
        log_path=tmp_path / f"{uuid.uuid4().hex[:6]}.log",
    ).start()


def test_with_a_live_worker_jobs_go_to_rq(
    dispatcher: Dispatcher, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    with start_worker(jobkit_redis_server, "rq-messages", tmp_path):
        d = dispatcher.dispatch(rq_jobs.ok, {"workdir": str(tmp_path)})
        assert (d.engine, d.reason) == ("rq", "rq")
        assert wait_for_job(d.job_id).status == JobStatus.SUCCEEDED


def test_without_a_live_worker_jobs_fall_back_and_nothing_stays_in_redis(
    dispatcher: Dispatcher, client: redis.Redis, tmp_path: Path
) -> None:
    d = dispatcher.dispatch(rq_jobs.ok, {"workdir": str(tmp_path)})
    assert (d.engine, d.reason) == ("temporal", "no-live-worker: rq-messages")
    assert dispatcher.get(d.job_id).reason == "no-live-worker: rq-messages"
    assert client.exists(f"rq:job:{d.job_id}") == 0
    assert client.llen("rq:queue:rq-messages") == 0


def test_a_killed_worker_stops_counting_as_live(
    dispatcher: Dispatcher, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    worker = start_worker(jobkit_redis_server, "rq-messages", tmp_path)
    assert dispatcher.dispatch(rq_jobs.ok, {"workdir": str(tmp_path)}).engine == "rq"
    worker.kill()
    deadline = time.monotonic() + 10
    while dispatcher.dispatch(rq_jobs.ok, {"workdir": str(tmp_path)}).engine == "rq":
        assert time.monotonic() < deadline, "a dead worker still counts as live"
        time.sleep(0.1)


def test_idempotency_key_finds_the_job_on_the_engine_it_fell_back_to(
    dispatcher: Dispatcher, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    payload = {"workdir": str(tmp_path)}
    first = dispatcher.dispatch(rq_jobs.ok, payload, idempotency_key="k1")
    assert first.engine == "temporal"
    with start_worker(jobkit_redis_server, "rq-messages", tmp_path):
        again = dispatcher.dispatch(rq_jobs.ok, payload, idempotency_key="k1")
    assert (again.job_id, again.engine, again.created) == (first.job_id, "temporal", False)
    assert again.reason == first.reason


def test_pickup_timeout_withdraws_the_job_and_falls_back_once(
    dispatcher: Dispatcher, jobkit_redis_server: RedisServer, client: redis.Redis, tmp_path: Path
) -> None:
    workdir = str(tmp_path)
    with start_worker(jobkit_redis_server, "rq-shutdown", tmp_path):
        busy = dispatcher.dispatch(rq_jobs.held, {"workdir": workdir, "gate": "busy"})
        wait_for_job(busy.job_id, lambda i: i.status == JobStatus.RUNNING)
        d = dispatcher.dispatch(rq_jobs.held, {"workdir": workdir}, pickup_timeout=0.2)
        assert (d.engine, d.reason) == ("temporal", "pickup-timeout")
        assert client.exists(f"rq:job:{d.job_id}") == 0
        assert client.lrange("rq:queue:rq-shutdown", 0, -1) == []
        open_gate(workdir, "go")
        open_gate(workdir, "busy")
        assert wait_for_job(d.job_id).status == JobStatus.SUCCEEDED
    assert count(workdir, "first") == 2  # `busy` once, the withdrawn job once


@pytest.mark.slow
def test_a_worker_taking_the_job_at_the_timeout_runs_it_exactly_once(
    dispatcher: Dispatcher, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    workdir = str(tmp_path)
    rq = dispatcher.engine("rq")
    runs, engines = 60, []
    with start_worker(jobkit_redis_server, "rq-messages", tmp_path):
        for i in range(runs):
            # A nap that ends just before or just after the pickup timeout: the worker
            # (one slot) takes the job right at the deadline, or just misses it.
            rq.enqueue(dispatcher.prepare(rq_jobs.nap, {"seconds": 0.002 * (i % 8)}))
            d = dispatcher.dispatch(rq_jobs.ok, {"workdir": workdir}, pickup_timeout=0.008)
            engines.append(d.engine)
            assert wait_for_job(d.job_id).status == JobStatus.SUCCEEDED
    assert count(workdir, "ok") == runs  # each job ran exactly once, wherever it went
    assert {"rq", "temporal"} <= set(engines), engines


def test_a_dead_redis_opens_the_circuit_and_a_probe_closes_it(tmp_path: Path) -> None:
    server = RedisServer(port=free_port())
    d = make_dispatcher(server.url, circuit_cool_down=0.5)
    rq = d.engine("rq")
    started = time.perf_counter()
    first = d.dispatch(rq_jobs.ok, {"workdir": str(tmp_path)})
    assert first.engine == "temporal"
    assert first.reason.startswith("redis-unhealthy: Redis at redis://127.0.0.1:")
    assert rq.breaker.is_open  # type: ignore[attr-defined]
    second = d.dispatch(rq_jobs.ok, {"workdir": str(tmp_path)})
    assert "circuit open" in second.reason
    assert time.perf_counter() - started < 2
    with server, start_worker(server, "rq-messages", tmp_path):
        deadline = time.monotonic() + 10
        while d.dispatch(rq_jobs.ok, {"workdir": str(tmp_path)}).engine != "rq":
            assert time.monotonic() < deadline, "the circuit never closed"
            time.sleep(0.1)
        assert not rq.breaker.is_open  # type: ignore[attr-defined]
    d.close()


def test_both_engines_down_raises_and_enqueues_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(BUILTIN_ENGINES, "temporal", "tests.test_dispatch:DownEngine")
    d = make_dispatcher(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(DispatchError) as caught:
        d.dispatch(rq_jobs.ok, {"workdir": str(tmp_path)})
    assert set(caught.value.causes) == {"rq", "temporal"}
    assert "redis-unhealthy" in caught.value.causes["rq"]
    assert "refused" in caught.value.causes["temporal"]
    d.close()


class SilentServer:
    """A TCP port on loopback that never answers: `accept=True` takes connections and
    never replies; `accept=False` fills its backlog so new connections hang in SYN."""

    def __init__(self, accept: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0 if not accept else 16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        if not accept:  # occupy the backlog so later SYNs are dropped
            for _ in range(4):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", self.port))
                self.held.append(s)

    def close(self) -> None:
        for s in self.held:
            s.close()
        self.sock.close()


@pytest.mark.parametrize("accept", [True, False], ids=["never-answers", "never-accepts"])
def test_a_blackholed_redis_costs_a_dispatch_at_most_its_budget(
    accept: bool, tmp_path: Path
) -> None:
    silent = SilentServer(accept)
    d = make_dispatcher(
        f"redis://127.0.0.1:{silent.port}/0", redis_connect_timeout=0.25, redis_socket_timeout=0.5
    )
    try:
        started = time.perf_counter()
        first = d.dispatch(rq_jobs.ok, {"workdir": str(tmp_path)})
        first_took = time.perf_counter() - started
        started = time.perf_counter()
        second = d.dispatch(rq_jobs.ok, {"workdir": str(tmp_path)})
        second_took = time.perf_counter() - started
    finally:
        d.close()
        silent.close()
    assert first.engine == second.engine == "temporal"
    assert first.reason.startswith("redis-unhealthy")
    budget = 0.25 + 0.5
    assert first_took < budget + 0.5, first_took  # one attempt, bounded by the timeouts
    assert second_took < 0.05, second_took  # the open circuit skips Redis at once


def test_concurrent_dispatch_from_threads(
    dispatcher: Dispatcher, jobkit_redis_server: RedisServer, tmp_path: Path
) -> None:
    workdir = str(tmp_path)
    with start_worker(jobkit_redis_server, "rq-messages", tmp_path):
        with ThreadPoolExecutor(8) as pool:
            dispatched = list(
                pool.map(
                    lambda _: dispatcher.dispatch(rq_jobs.ok, {"workdir": workdir}), range(200)
                )
            )
        assert len({d.job_id for d in dispatched}) == 200
        for d in dispatched:
            assert wait_for_job(d.job_id).status == JobStatus.SUCCEEDED
    assert count(workdir, "ok") == 200
