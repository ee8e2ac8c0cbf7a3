"""The engine conformance suite on Temporal: a real dev server and an in-process worker.

Time is real here, so `long_sleep` is kept to a couple of seconds (the suite waits it
out); it still exceeds the engine's sleep threshold, so those sleeps free the job's slot.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

import jobkit_dispatch.conformance.jobs  # noqa: F401 - the worker must know these jobs
from jobkit_dispatch.conformance import EngineConformance, Harness
from jobkit_dispatch.testing.temporal_server import TemporalDevServer

pytest.importorskip("temporalio")

from jobkit_dispatch.engines.temporal import TemporalEngine

GRACE = 0.0  # seconds: see `temporal_engine`


@pytest.fixture(scope="module")
def temporal_engine(jobkit_temporal_server: TemporalDevServer) -> Iterator[TemporalEngine]:
    engine = TemporalEngine(
        jobkit_temporal_server.address,
        task_queue_prefix="conformance-",
        sleep_threshold=timedelta(seconds=0.5),
    )
    # No grace for a job no worker knows: a handed-back workflow task comes back after
    # Temporal's 10 s task timeout at the earliest (tests/test_unknown_jobs.py waits it out).
    with engine.start_worker(["conformance"], concurrency=1, unknown_job_grace=GRACE):
        yield engine
    engine.close()


class TestTemporalConformance(EngineConformance):
    @pytest.fixture
    def harness(self, temporal_engine: TemporalEngine) -> Harness:
        return Harness(
            temporal_engine,
            long_sleep=timedelta(seconds=2),
            short_sleep=timedelta(milliseconds=20),
            timeout=30.0,  # a blocked workflow fails after its second 2 s block
            strict=True,  # Temporal holds workflow code to its rules itself
            unknown_job_grace=timedelta(seconds=GRACE),
        )
