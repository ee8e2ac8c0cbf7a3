"""What is on each RQ queue right now: the numbers operators watch and alert on.

Read in one pipeline (redis-py checks first that the live-worker script is loaded: a
second, tiny round trip), so a Prometheus scrape or `jobkit stats` costs Redis next to
nothing and never touches a job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from redis import Redis

from jobkit.settings import JobkitSettings
from jobkit_dispatch.engines.rq import keys
from jobkit_dispatch.engines.rq.scripts import LIVE_WORKERS


@dataclass(frozen=True)
class QueueStats:
    queue: str
    queued: int  # waiting for a worker
    scheduled: int  # due later: delayed, waiting out a retry backoff, or sleeping
    running: int  # held by a worker under a lease
    finished: int  # succeeded, still readable (result_ttl)
    failed: int  # failed for good, still readable (failure_ttl)
    cancelled: int
    live_workers: int  # heartbeat within the last three heartbeats
    quarantined: int = 0  # ids that named no job, kept for inspection (see `poison`)

    @property
    def states(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "scheduled": self.scheduled,
            "running": self.running,
            "finished": self.finished,
            "failed": self.failed,
            "cancelled": self.cancelled,
        }


def queue_stats(client: Redis, queues: Iterable[str], settings: JobkitSettings) -> list[QueueStats]:
    """The stats of `queues`. Raises redis' errors: the caller decides what "down" means."""
    names = list(queues)
    oldest = time.time() - 3 * settings.worker_heartbeat
    live_workers = client.register_script(LIVE_WORKERS)
    pipe = client.pipeline(transaction=False)
    for name in names:
        q = keys.QueueKeys(name)
        pipe.llen(q.queue)
        pipe.llen(q.claimed)
        pipe.zcard(q.scheduled)
        pipe.zcard(q.running)
        pipe.zcard(q.finished)
        pipe.zcard(q.failed)
        pipe.zcard(q.canceled)
        pipe.llen(q.quarantine)
        live_workers(keys=[q.workers], args=[oldest], client=pipe)
    replies = iter(pipe.execute())
    stats = []
    for name in names:
        queued, claimed, scheduled, running, finished, failed, cancelled, quarantined, alive = (
            next(replies) for _ in range(9)
        )
        stats.append(
            QueueStats(
                queue=name,
                queued=queued + claimed,  # popped but not started yet: still waiting
                scheduled=scheduled,
                running=running,
                finished=finished,
                failed=failed,
                cancelled=cancelled,
                live_workers=alive,
                quarantined=quarantined,
            )
        )
    return stats
