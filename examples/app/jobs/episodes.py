"""`episodes.resolve`: find an episode's media with yt-dlp, wait for its premiere if it has
not aired yet, download it and store it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, HttpUrl

from examples.app import media, store
from jobkit_engine import JobContext, Retry, job


class ResolveEpisode(BaseModel):
    url: HttpUrl


@job(
    "episodes.resolve",
    queue="default",
    retry=Retry(attempts=5, backoff=2.0),
    timeout=timedelta(minutes=5),
)
async def resolve_episode(ctx: JobContext, payload: ResolveEpisode) -> store.StoredEpisode:
    url = str(payload.url)
    info = await ctx.step.run("extract", media.extract_media_info, url)
    ctx.report_progress(0.25, f"found {info.title!r}")
    if not info.available and info.release_time is not None:
        # A durable sleep: the worker is free meanwhile, and a restart loses nothing.
        ctx.report_progress(0.3, f"premieres at {info.release_time.isoformat()}")
        await ctx.step.sleep_until("wait-for-premiere", info.release_time)
    download = await ctx.step.run("download", media.download_media, url)
    ctx.report_progress(0.8, f"downloaded {download.size} bytes")
    episode = store.StoredEpisode(
        url=url,
        title=info.title,
        series=info.series,
        episode_number=info.episode_number,
        duration=info.duration,
        file=download.file,
        size=download.size,
        sha256=download.sha256,
        released_at=info.release_time,
        resolved_at=await ctx.step.run("clock", _now),
    )
    return await ctx.step.run("store", store.save_episode, episode)


def _now() -> datetime:
    # Read in a step: code outside steps must give the same answer when a job resumes.
    return datetime.now(UTC)
