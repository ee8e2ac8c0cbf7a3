"""The example's schedules, run by `jobkit cron --import examples.workers.schedules`.

Importing the job modules first registers `sync.nightly`, so a payload mistake here fails
when cron starts, not at three in the morning.
"""

from examples.app.jobs import nightly_sync
from examples.app.settings import get_example_settings
from jobkit_dispatch.cron import schedule

nightly = schedule(
    "nightly-sync",
    job=nightly_sync,
    payload={"per_page": 10},
    cron=get_example_settings().sync_cron,  # 03:00 UTC unless EXAMPLE_SYNC_CRON says otherwise
    timezone="UTC",
    catch_up="latest",  # after downtime, run the most recent missed night once, not each
)
