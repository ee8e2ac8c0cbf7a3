"""Recurring jobs: schedules defined in code, dispatched by `jobkit cron`.

```python
from datetime import timedelta
from jobkit_dispatch.cron import schedule

schedule("nightly-digest", cron="0 6 * * *", timezone="Europe/Berlin",
         job="digest.send", payload={"kind": "daily"}, catch_up="latest")
schedule("refresh-feeds", every=timedelta(minutes=5), job="feeds.refresh")
```

`jobkit cron --import myapp.schedules` dispatches each fire time through the dispatcher
exactly once, however many cron processes run; see docs/cron.md.
"""

from jobkit_dispatch.cron._scheduler import Fired, Plan, Scheduler, plan, run_cron
from jobkit_dispatch.cron._schedules import (
    CATCH_UP_POLICIES,
    CatchUp,
    DuplicateScheduleError,
    Schedule,
    ScheduleError,
    ScheduleRegistry,
    default_schedules,
    fire_key,
    schedule,
)

__all__ = [
    "CATCH_UP_POLICIES",
    "CatchUp",
    "DuplicateScheduleError",
    "Fired",
    "Plan",
    "Schedule",
    "ScheduleError",
    "ScheduleRegistry",
    "Scheduler",
    "default_schedules",
    "fire_key",
    "plan",
    "run_cron",
    "schedule",
]
