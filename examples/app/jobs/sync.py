"""`sync.nightly`: copy the media site's catalog into the database, a page per step.

A long job with many steps on the `data_sync` queue: if the worker dies on page 40, the
next attempt replays pages 1-39 from their stored results and carries on from page 40.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field

from examples.app import catalog, store
from jobkit_engine import JobContext, Retry, job


class NightlySync(BaseModel):
    per_page: int = Field(10, ge=1, le=100)


class SyncReport(BaseModel):
    pages: int
    episodes: int


@job(
    "sync.nightly",
    queue="data_sync",
    retry=Retry(attempts=3, backoff=2.0),
    timeout=timedelta(hours=1),
)
async def nightly_sync(ctx: JobContext, payload: NightlySync) -> SyncReport:
    pages = await ctx.step.run("count-pages", catalog.count_pages, payload.per_page)
    episodes = 0
    for page in range(1, pages + 1):
        episodes += await ctx.step.run(f"page-{page}", catalog.sync_page, page, payload.per_page)
        ctx.report_progress(page / pages, f"page {page} of {pages}")
    await ctx.step.run("record", store.record_sync, ctx.job_id, pages, episodes)
    return SyncReport(pages=pages, episodes=episodes)
