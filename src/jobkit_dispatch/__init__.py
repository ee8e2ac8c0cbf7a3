"""jobkit_dispatch: hand jobs to engines, and find them again.

`dispatch_job` validates a job and gives it to RQ, Temporal or the inline engine;
`get_job` and `cancel_job` find it by id wherever it ran. For operators, across engines:
`list_jobs`, `describe_job`, `retry_job` / `retry_jobs` (from the step that failed) and
`purge_jobs`; `overview` for every engine at a glance (the dashboard's first page).
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
from jobkit_dispatch._listing import JobList, alist_jobs, list_jobs
from jobkit_dispatch._operations import (
    PurgeResult,
    RetryReport,
    adescribe_job,
    apurge_jobs,
    aretry_job,
    aretry_jobs,
    describe_job,
    purge_jobs,
    retry_job,
    retry_jobs,
)
from jobkit_dispatch._overview import FallbackShare, Overview, aoverview, overview
from jobkit_dispatch.engines import Engine, EngineBase, JobRequest, load_engine

__all__ = [
    "Dispatched",
    "Dispatcher",
    "Engine",
    "EngineBase",
    "FallbackShare",
    "JobList",
    "JobRequest",
    "Overview",
    "PurgeResult",
    "RetryReport",
    "acancel_job",
    "adescribe_job",
    "adispatch_job",
    "aget_job",
    "alist_jobs",
    "aoverview",
    "apurge_jobs",
    "aretry_job",
    "aretry_jobs",
    "cancel_job",
    "describe_job",
    "dispatch_job",
    "get_dispatcher",
    "get_job",
    "idempotent_job_id",
    "list_jobs",
    "load_engine",
    "overview",
    "purge_jobs",
    "retry_job",
    "retry_jobs",
    "set_dispatcher",
]
