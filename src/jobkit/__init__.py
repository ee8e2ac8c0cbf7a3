"""jobkit: queue primitives and infrastructure (settings, Redis, queues, health).

Job authors import from `jobkit_engine`; applications dispatch with `jobkit_dispatch`.
"""

from jobkit.durations import Duration
from jobkit.errors import JobkitError
from jobkit.health import Health
from jobkit.queues import QueueRegistry, QueueSpec, default_queues, get_queue, register_queue
from jobkit.settings import JobkitSettings, get_settings, redact_url

__version__ = "0.1.0"

__all__ = [
    "Duration",
    "Health",
    "JobkitError",
    "JobkitSettings",
    "QueueRegistry",
    "QueueSpec",
    "__version__",
    "default_queues",
    "get_queue",
    "get_settings",
    "redact_url",
    "register_queue",
]
