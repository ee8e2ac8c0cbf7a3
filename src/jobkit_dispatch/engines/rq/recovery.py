"""Retrying and purging RQ jobs: each change one atomic script (`scripts_ops`).

A retry puts a failed or cancelled job back on its queue under its id, for a fresh round
of attempts; its step memo stays in the hash, so the worker that takes it replays the
completed steps and runs from the one that failed, with nothing to tell it apart from
any other start. A purge deletes a queue's ended jobs of one status in batches, so that
Redis is never blocked for long whatever the registry holds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from jobkit.errors import JobNotFoundError, JobNotRetryableError
from jobkit.settings import JobkitSettings
from jobkit_dispatch.engines.recovery import PURGEABLE_STATUSES
from jobkit_dispatch.engines.rq import keys
from jobkit_dispatch.engines.rq.codec import INFO_FIELDS, decode_info, status_of
from jobkit_dispatch.engines.rq.scripts_ops import PURGE, RETRY
from jobkit_engine import JobInfo, JobStatus

if TYPE_CHECKING:
    from redis import Redis

PURGE_BATCH = 500  # jobs deleted per script call

# jobkit's ended status -> the registry that holds such jobs, and the RQ statuses they have.
_ENDED = {
    JobStatus.SUCCEEDED: (keys.finished_key_prefix, "finished", ""),
    JobStatus.FAILED: (keys.failed_key_prefix, "failed", "stopped"),
    JobStatus.CANCELLED: (keys.canceled_key_prefix, "canceled", ""),
}


class Recovery:
    """Retry and purge on one Redis (`RQEngine` calls them). Both raise redis' errors."""

    def __init__(self, redis: Redis, settings: JobkitSettings, engine: str) -> None:
        self._redis = redis
        self._settings = settings
        self._engine = engine
        self._retry = redis.register_script(RETRY)
        self._purge = redis.register_script(PURGE)

    def retry(self, job_id: str, *, from_scratch: bool) -> JobInfo:
        reply = self._retry(
            keys=[keys.job_key(job_id)],
            args=[
                job_id,
                "1" if from_scratch else "0",
                keys.queue_key_prefix,
                keys.open_key_prefix,
                keys.finished_key_prefix,
                keys.failed_key_prefix,
                keys.canceled_key_prefix,
                keys.queues_set_key,
                keys.step_field_prefix,
                keys.step_began_prefix,
                keys.step_saved_prefix,
                keys.attempt_field_prefix,
                *INFO_FIELDS,
            ],
        )
        if reply == -1:
            raise JobNotFoundError(job_id)
        if reply[0] == 0:
            _, status, wait = reply
            raise JobNotRetryableError(job_id, status_of(status.decode(), wait or None).value)
        info = decode_info(job_id, reply, self._engine)
        assert info is not None  # the script checked that it is a job
        return info

    def purge(self, queue: str, status: JobStatus) -> int:
        if status not in PURGEABLE_STATUSES:
            allowed = ", ".join(sorted(s.value for s in PURGEABLE_STATUSES))
            raise ValueError(f"only ended jobs can be purged ({allowed}), not {status.value}")
        prefix, rq_status, other = _ENDED[status]
        registry, q = prefix + queue, keys.QueueKeys(queue)
        # Bounded by what the registry held when the purge began: jobs that end meanwhile
        # may go too, but a queue that never stops finishing jobs cannot keep it running.
        batches = math.ceil(self._redis.zcard(registry) / PURGE_BATCH) + 1
        deleted = 0
        for _ in range(batches):
            gone, taken = self._purge(
                keys=[registry, q.open],
                args=[keys.job_key_prefix, PURGE_BATCH, rq_status, other],
            )
            deleted += gone
            if taken < PURGE_BATCH:
                break
        return deleted
