"""Media lookups with yt-dlp, as a library: what `episodes.resolve` runs in its steps.

yt-dlp is blocking; jobkit runs a plain function step in a thread, so these stay plain
functions. They are module-level so that any engine's worker can find them by name.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from yt_dlp import YoutubeDL
from yt_dlp.utils import DownloadError

from examples.app.settings import get_example_settings
from jobkit_engine import NonRetryableError

QUIET = {"quiet": True, "no_warnings": True, "noprogress": True}


class MediaInfo(BaseModel):
    """What yt-dlp found on the page, before anything is downloaded."""

    id: str
    title: str
    series: str | None = None
    episode_number: int | None = None
    duration: float | None = None
    ext: str
    release_time: datetime | None = None
    available: bool


class Download(BaseModel):
    file: str
    size: int
    sha256: str


def extract_media_info(url: str) -> MediaInfo:
    """Read the page's metadata. An episode whose release time is still ahead is not
    `available` yet: its page is up but its media is not."""
    info = _extract(url, QUIET, download=False)
    released = info.get("release_timestamp") or info.get("timestamp")
    release_time = datetime.fromtimestamp(released, UTC) if released else None
    return MediaInfo(
        id=info["id"],
        title=info.get("title") or info["id"],
        series=info.get("series"),
        episode_number=info.get("episode_number"),
        duration=info.get("duration"),
        ext=info.get("ext") or "bin",
        release_time=release_time,
        available=release_time is None or release_time <= datetime.now(UTC),
    )


def download_media(url: str) -> Download:
    """Download the media into the data directory; a repeat overwrites the same file."""
    media_dir = get_example_settings().data_dir / "media"
    options = {**QUIET, "outtmpl": str(media_dir / "%(id)s.%(ext)s"), "overwrites": True}
    info = _extract(url, options, download=True)
    path = Path(info["requested_downloads"][0]["filepath"])
    data = path.read_bytes()
    return Download(file=str(path), size=len(data), sha256=hashlib.sha256(data).hexdigest())


def _extract(url: str, options: dict[str, Any], *, download: bool) -> dict[str, Any]:
    try:
        with YoutubeDL(options) as ydl:
            return ydl.sanitize_info(ydl.extract_info(url, download=download))
    except DownloadError as exc:
        if "Unsupported URL" in str(exc):  # retrying will not make a page have media
            raise NonRetryableError(f"no media found at {url}") from exc
        raise
