"""Redis key names. RQ's own keys keep RQ's layout, so `rq info` and RQ dashboards see
jobkit's jobs and workers; jobkit's additions live under `jobkit:`."""

from __future__ import annotations

job_key_prefix = "rq:job:"
queue_key_prefix = "rq:queue:"
queues_set_key = "rq:queues"
scheduled_key_prefix = "rq:scheduled:"  # ZSET job id -> unix time it is due
finished_key_prefix = "rq:finished:"  # ZSET job id -> expiry
failed_key_prefix = "rq:failed:"
canceled_key_prefix = "rq:canceled:"
worker_key_prefix = "rq:worker:"
workers_set_key = "rq:workers"
workers_by_queue_prefix = "rq:workers:"

claimed_key_prefix = "jobkit:claimed:"  # LIST: ids a worker popped and is about to start
running_key_prefix = "jobkit:running:"  # ZSET job id -> lease expiry (unix time)
quarantine_key_prefix = "jobkit:quarantine:"  # LIST of JSON records: ids that name no job
# ZSET job id -> created time in whole microseconds: the queue's jobs that have not ended
# (queued, scheduled, running, sleeping), for listing; ended ones are in RQ's registries.
open_key_prefix = "jobkit:open:"
cancel_channel = "jobkit:cancel"  # PUBLISH job id: a running job was cancelled

step_field_prefix = "jk_step:"  # one field of the job hash per completed step
step_began_prefix = "jk_began:"  # when each step function was last let start (Redis' clock)
# When each step's memo entry was saved (worker clock): a step.run's end, a sleep's start.
step_saved_prefix = "jk_saved:"
# One field per ended attempt, `jk_att:<round>:<number>` = JSON {number, outcome, started,
# finished, error}; the round counts operator retries (`jk_retries`), the number is
# `ctx.attempt`. Written by the script that ends the attempt (FINISH, RECOVER).
attempt_field_prefix = "jk_att:"


def job_key(job_id: str) -> str:
    return job_key_prefix + job_id


class QueueKeys:
    """Every key of one queue, named once."""

    __slots__ = (
        "canceled",
        "claimed",
        "failed",
        "finished",
        "name",
        "open",
        "quarantine",
        "queue",
        "running",
        "scheduled",
        "workers",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue = queue_key_prefix + name
        self.scheduled = scheduled_key_prefix + name
        self.finished = finished_key_prefix + name
        self.failed = failed_key_prefix + name
        self.canceled = canceled_key_prefix + name
        self.claimed = claimed_key_prefix + name
        self.running = running_key_prefix + name
        self.quarantine = quarantine_key_prefix + name
        self.open = open_key_prefix + name
        self.workers = workers_by_queue_prefix + name
