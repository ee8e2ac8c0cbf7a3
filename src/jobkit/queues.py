"""Queue specs: the unit a worker serves and scales by.

The three built-in queues follow the usual split of background work: `default` for many
short IO-bound jobs, `data_sync` for few long jobs, `scheduled` for delayed work.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

from jobkit.durations import to_timedelta
from jobkit.errors import ConfigurationError, UnknownQueueError

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


@dataclass(frozen=True)
class QueueSpec:
    """A named queue, its per-worker concurrency and the timeout of jobs that set none."""

    name: str
    concurrency: int = 10
    default_timeout: timedelta = field(default=timedelta(minutes=5))
    description: str = ""

    def __post_init__(self) -> None:
        if not _QUEUE_NAME.match(self.name):
            raise ConfigurationError(
                f"queue name {self.name!r} may only contain letters, digits, '_' and '-'"
            )
        if self.concurrency < 1:
            raise ConfigurationError(f"queue {self.name!r}: concurrency must be >= 1")
        object.__setattr__(self, "default_timeout", to_timedelta(self.default_timeout))


DEFAULT_QUEUES = (
    QueueSpec(
        "default",
        concurrency=10,
        default_timeout=timedelta(minutes=5),
        description="short IO-bound jobs",
    ),
    QueueSpec(
        "data_sync",
        concurrency=2,
        default_timeout=timedelta(hours=2),
        description="few long-running jobs",
    ),
    QueueSpec(
        "scheduled",
        concurrency=5,
        default_timeout=timedelta(minutes=15),
        description="delayed and periodic jobs",
    ),
)


class QueueRegistry:
    """The queues this process knows; the built-in ones plus whatever the app registers."""

    def __init__(self, specs: tuple[QueueSpec, ...] = DEFAULT_QUEUES) -> None:
        self._lock = threading.Lock()
        self._specs: dict[str, QueueSpec] = {s.name: s for s in specs}

    def register(self, spec: QueueSpec) -> QueueSpec:
        """Add a queue or replace one (e.g. to change the concurrency of `default`)."""
        with self._lock:
            self._specs[spec.name] = spec
        return spec

    def get(self, name: str) -> QueueSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise UnknownQueueError(name, self._specs) from None

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self) -> Iterator[QueueSpec]:
        return iter(list(self._specs.values()))


default_queues = QueueRegistry()


def register_queue(spec: QueueSpec) -> QueueSpec:
    """Add a queue to (or replace one in) the process-wide registry."""
    return default_queues.register(spec)


def get_queue(name: str) -> QueueSpec:
    return default_queues.get(name)
