"""jobkit_dispatch: hand jobs to engines, and find them again.

`dispatch_job` validates a job and gives it to RQ, Temporal or the inline engine;
`get_job` and `cancel_job` find it by id wherever it ran.
"""

from jobkit_dispatch._api import (
    acancel_job,
    adispatch_job,
    aget_job,
    cancel_job,
    dispatch_job,
    get_job,
)
from jobkit_dispatch._dispatch import (
    Dispatched,
    Dispatcher,
    get_dispatcher,
    idempotent_job_id,
    set_dispatcher,
)
from jobkit_dispatch.engines import Engine, EngineBase, JobRequest, load_engine

__all__ = [
    "Dispatched",
    "Dispatcher",
    "Engine",
    "EngineBase",
    "JobRequest",
    "acancel_job",
    "adispatch_job",
    "aget_job",
    "cancel_job",
    "dispatch_job",
    "get_dispatcher",
    "get_job",
    "idempotent_job_id",
    "load_engine",
    "set_dispatcher",
]
