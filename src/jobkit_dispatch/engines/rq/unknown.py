"""A job this worker does not know: hand it back for a worker that does.

During a rolling deploy, workers running the old code and workers running the new serve
one queue, and a job only the new code defines can be popped by an old worker. Failing it
with `UnknownJobError` would lose it to a deploy minutes from done, so the old worker
hands it back instead: the job waits in the scheduled set for a short while (a tenth of
the time it has waited so far, 0.5 s to 30 s, so the worker does not spin on it), then
goes back on the queue for any worker. The handed-back attempt does not count.

The first hand-back stamps the job (`jk_unknown_since`); a worker that knows the job
clears the stamp when it runs it. Once `unknown_job_grace` seconds (default 600) have
passed since the stamp with no worker that knows the job taking it, the worker that has
it fails it with an `UnknownJobError` naming the job, the grace and the modules it
imports. Each worker process logs a job it hands back once, not at every pop: why, on
`jobkit.worker`, and the outcome line on `jobkit.jobs`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from jobkit.errors import UnknownJobError
from jobkit_dispatch.engines.rq import keys
from jobkit_engine import JobError, JobRegistry
from jobkit_engine.runtime import Cancelled, Failed, Outcome, log_handed_back

if TYPE_CHECKING:
    from jobkit_dispatch.engines.rq.codec import ClaimedJob
    from jobkit_dispatch.engines.rq.link import WorkerLink

log = logging.getLogger("jobkit.worker")

MIN_DELAY, MAX_DELAY = 0.5, 30.0  # seconds a handed-back job waits before it is offered again
_REMEMBERED = 10_000  # job ids a worker remembers having logged

# KEYS: job, running, scheduled. ARGV: id, due, now.
# 1: handed back; 0: the lease was lost (the job was recovered elsewhere), nothing written;
# 2: a cancel was accepted meanwhile: nothing written, FINISH records it cancelled.
# `jk_resume` makes the next start continue this attempt instead of counting a new one.
HAND_BACK = """
if redis.call('HGET', KEYS[1], 'jk_cancel') then return 2 end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], 'jk_unknown_since', ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'scheduled', 'jk_wait', 'unknown',
  'jk_scheduled_for', ARGV[2], 'jk_resume', '1')
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return 1
"""


def hand_back_delay(waited: float, grace: float) -> float:
    """Seconds until a job that waited `waited` seconds so far is offered again: a tenth
    of that, within [MIN_DELAY, MAX_DELAY], and never much past the end of the grace."""
    delay = min(MAX_DELAY, max(MIN_DELAY, waited / 10))
    return max(0.05, min(delay, grace - waited + 0.05))


class UnknownJobs:
    """What one worker does with the jobs it pops but does not know."""

    def __init__(self, link: WorkerLink, registry: JobRegistry, grace: float) -> None:
        self._link = link
        self._registry = registry
        self.grace = grace
        self._hand_back = link.redis.register_script(HAND_BACK)
        self._logged: OrderedDict[str, None] = OrderedDict()

    async def handle(self, claimed: ClaimedJob) -> Outcome | None:
        """Hand the started job back; None once done. The outcome to record instead when
        the grace is over (`UnknownJobError`), or when a cancel came first."""
        now = time.time()
        since = claimed.unknown_since if claimed.unknown_since is not None else now
        waited = now - since
        if waited >= self.grace:
            log.error(
                "job %s (%s): no worker that knows it took it within %gs; failed",
                claimed.job_id,
                claimed.job_name,
                self.grace,
            )
            return Failed(JobError.from_exception(self.error(claimed.job_name)), None)
        link, q = self._link, self._link.keys
        due = now + hand_back_delay(waited, self.grace)
        answer = await link.retrying(
            lambda: self._hand_back(
                keys=[keys.job_key(claimed.job_id), q.running, q.scheduled],
                args=[claimed.job_id, due, now],
            )
        )
        if answer == 2:
            return Cancelled()
        if answer == 1:
            self._log_once(claimed)
        return None

    async def known(self, claimed: ClaimedJob) -> None:
        """A job once handed back runs here: its grace starts afresh if it is ever handed
        back again (a rollback after it slept)."""
        if claimed.unknown_since is not None:
            job_key = keys.job_key(claimed.job_id)
            await self._link.retrying(lambda: self._link.redis.hdel(job_key, "jk_unknown_since"))

    def error(self, job_name: str) -> UnknownJobError:
        return UnknownJobError(
            job_name,
            self._registry.names(),
            grace=self.grace,
            modules=self._registry.modules(),
        )

    def _log_once(self, claimed: ClaimedJob) -> None:
        if claimed.job_id in self._logged:
            return
        self._logged[claimed.job_id] = None
        if len(self._logged) > _REMEMBERED:
            self._logged.popitem(last=False)
        log.warning(
            "job %s: this worker does not know job %r (it imports %s); handed back for a "
            "worker that does, failed if none takes it within %gs (JOBKIT_UNKNOWN_JOB_GRACE)",
            claimed.job_id,
            claimed.job_name,
            ", ".join(self._registry.modules()) or "no job module",
            self.grace,
        )
        log_handed_back(
            job_id=claimed.job_id,
            job_name=claimed.job_name,
            queue=self._link.keys.name,
            engine="rq",
            attempt=claimed.attempt,
        )
