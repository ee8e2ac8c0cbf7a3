"""Listing an RQ engine's jobs a page at a time, whatever the size of its queues.

Each queue's page is one LIST script (`scripts_ops`), which walks the queue's indexes from
the page's position and reads at most a budget of jobs (`SCAN_FACTOR` times the limit);
every queue of a page goes in one pipeline, so a page is one round trip and a bounded
number of Redis commands. The queues' pages are then merged here into the one listing
order (`engines/recovery.py`), cut where every queue's page is still complete.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from jobkit.errors import CorruptJobError
from jobkit.queues import QueueRegistry
from jobkit.settings import JobkitSettings
from jobkit_dispatch.engines.recovery import JobPage, JobQuery, ListPosition
from jobkit_dispatch.engines.rq import keys
from jobkit_dispatch.engines.rq.codec import INFO_FIELDS, decode_info
from jobkit_dispatch.engines.rq.scripts_ops import LIST
from jobkit_engine import JobInfo

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("jobkit.rq")

SCAN_FACTOR = 4  # jobs a page may read per queue, as a multiple of its limit (plus SCAN_SLACK)
SCAN_SLACK = 16
MAX_LIMIT = 1000  # jobs per page at most

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LIST_SHA = hashlib.sha1(LIST.encode()).hexdigest()


def to_micros(at: datetime) -> int:
    """`at` in whole microseconds since the epoch (a naive time is taken as UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return (at - _EPOCH) // timedelta(microseconds=1)


def from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


@dataclass(frozen=True)
class _Row:
    position: ListPosition
    info: JobInfo


class Lister:
    """Pages of one Redis' jobs (`RQEngine.list_jobs` calls it)."""

    def __init__(
        self, redis: Redis, settings: JobkitSettings, queues: QueueRegistry, engine: str
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._queues = queues
        self._engine = engine

    def page(self, query: JobQuery, now: float) -> JobPage:
        """One page of `query`. Raises redis' errors (the engine maps them)."""
        limit = max(1, min(query.limit, MAX_LIMIT))
        args = self._args(query, limit, now)
        if query.queue is not None:
            pages = self._run([query.queue], args)
        else:
            known = [spec.name for spec in self._queues]
            members, *pages = self._run(known, args, with_queue_set=True)
            more = sorted(_queue_names(members) - set(known))
            if more:  # queues only Redis knows (another app registered them)
                pages += self._run(more, args)
        return merge([self._decode(reply) for reply in pages], limit)

    def _args(self, query: JobQuery, limit: int, now: float) -> list[Any]:
        after = query.after
        return [
            keys.job_key_prefix,
            "" if after is None else ("1" if after.finished else "0"),
            "" if after is None else to_micros(after.at),
            "" if after is None else after.job_id,
            "" if query.status is None else query.status.value,
            query.job_name or "",
            "" if query.since is None else to_micros(query.since),
            "" if query.until is None else to_micros(query.until),
            limit,
            limit * SCAN_FACTOR + SCAN_SLACK,
            now,
            self._settings.result_ttl,
            self._settings.failure_ttl,
            *INFO_FIELDS,
        ]

    def _run(
        self, queues: Sequence[str], args: list[Any], *, with_queue_set: bool = False
    ) -> list[Any]:
        """One pipeline: (the queue set, then) one LIST per queue. A Redis that does not
        have the script yet (restarted, flushed) gets it loaded, and the pipeline again."""
        for attempt in (1, 2):
            pipe = self._redis.pipeline(transaction=False)
            if with_queue_set:
                pipe.smembers(keys.queues_set_key)
            for name in queues:
                q = keys.QueueKeys(name)
                pipe.evalsha(_LIST_SHA, 4, q.open, q.finished, q.failed, q.canceled, *args)
            try:
                return pipe.execute()
            except NoScriptError:
                if attempt == 2:
                    raise
                self._redis.script_load(LIST)
        raise AssertionError("unreachable")

    def _decode(self, reply: list[Any]) -> tuple[list[_Row], ListPosition | None]:
        rows, frontier = reply
        decoded = []
        for row in rows:
            job_id, section, at, values = row[0].decode(), row[1], int(row[2]), row[3:]
            try:
                info = decode_info(job_id, values, self._engine)
            except CorruptJobError as exc:  # one damaged record must not hide the others
                log.warning("listing skips a job it cannot read: %s", exc)
                continue
            if info is not None:
                decoded.append(_Row(ListPosition(section == b"1", from_micros(at), job_id), info))
        if not frontier:
            return decoded, None
        section, at, job_id = frontier
        return decoded, ListPosition(section == b"1", from_micros(int(at)), job_id.decode())


def _queue_names(members: set[bytes]) -> set[str]:
    prefix = keys.queue_key_prefix.encode()
    names = set()
    for member in members:
        if member.startswith(prefix):
            try:
                names.add(member[len(prefix) :].decode())
            except UnicodeDecodeError:
                continue  # not a queue jobkit could have made
    return names


def merge(pages: Sequence[tuple[list[_Row], ListPosition | None]], limit: int) -> JobPage:
    """The queues' pages as one: in the listing order, no further than the earliest
    frontier (past it a queue's page may be missing jobs), at most `limit` jobs."""
    frontiers = [frontier for _, frontier in pages if frontier is not None]
    bound = min(frontiers) if frontiers else None
    rows = sorted((row for page, _ in pages for row in page), key=lambda row: row.position)
    if bound is not None:
        rows = [row for row in rows if not bound < row.position]
    if len(rows) > limit:
        rows = rows[:limit]
        bound = rows[-1].position
    return JobPage(tuple(row.info for row in rows), bound)
