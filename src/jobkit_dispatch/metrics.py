"""Prometheus metrics: `jobkit metrics --port 9108` serves /metrics for a scraper.

The numbers are read from Redis when Prometheus scrapes, not counted by workers: one small
process serves them for every queue, however many workers run and wherever, and a worker
that crashed cannot take its counters with it. Jobs that fell back to Temporal are
Temporal's to report (its server and SDK export their own metrics).

Needs `jobkit-dispatch[metrics]` (prometheus-client).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError

from jobkit.settings import JobkitSettings
from jobkit_dispatch.engines.rq.stats import queue_stats


class RQQueueCollector(Collector):
    """`jobkit_rq_jobs{queue,state}`, `jobkit_rq_live_workers{queue}`,
    `jobkit_rq_quarantined{queue}`, `jobkit_redis_up`."""

    def __init__(self, client: Redis, queues: Sequence[str], settings: JobkitSettings) -> None:
        self.client = client
        self.queues = list(queues)
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("jobkit_redis_up", "1 if the queue Redis answered this scrape")
        started = time.monotonic()
        try:
            stats = queue_stats(self.client, self.queues, self.settings)
        except (RedisError, OSError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        took = GaugeMetricFamily(
            "jobkit_rq_scrape_seconds", "Seconds it took to read the queue stats from Redis"
        )
        took.add_metric([], time.monotonic() - started)
        yield took
        jobs = GaugeMetricFamily(
            "jobkit_rq_jobs",
            "Jobs on an RQ queue by state (finished, failed and cancelled ones until they expire)",
            labels=["queue", "state"],
        )
        workers = GaugeMetricFamily(
            "jobkit_rq_live_workers",
            "RQ workers serving the queue whose heartbeat is recent; 0 sends new jobs to Temporal",
            labels=["queue"],
        )
        quarantined = GaugeMetricFamily(
            "jobkit_rq_quarantined",
            "Ids on an RQ queue that named no job (not UTF-8, no job record), set aside in "
            "jobkit:quarantine:<queue>; anything above 0 deserves a look",
            labels=["queue"],
        )
        for queue in stats:
            for state, count in queue.states.items():
                jobs.add_metric([queue.queue, state], count)
            workers.add_metric([queue.queue], queue.live_workers)
            quarantined.add_metric([queue.queue], queue.quarantined)
        yield jobs
        yield workers
        yield quarantined
