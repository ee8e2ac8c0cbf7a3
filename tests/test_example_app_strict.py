"""The example app's jobs keep Temporal's rules: each runs to success on a strict inline
engine, against the loopback media site and the flaky mail API (its retries included)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("yt_dlp")

from examples.app import store
from examples.app.fakes import MailServer, MediaSite
from examples.app.jobs import nightly_sync, resolve_episode, send_followup, send_welcome
from examples.app.settings import get_example_settings
from jobkit_dispatch import dispatch_job
from jobkit_dispatch.testing import inline_engine, wait_for_job
from jobkit_engine import JobInfo, StrictMode


@pytest.fixture
def fakes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[MediaSite, MailServer]]:
    site = MediaSite(episodes=12).start()
    mail = MailServer(fail_every=2).start()  # the first send of each pair fails with 503
    monkeypatch.setenv("EXAMPLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EXAMPLE_MEDIA_SITE", site.url)
    monkeypatch.setenv("EXAMPLE_MAIL_API", mail.url)
    get_example_settings.cache_clear()
    try:
        yield site, mail
    finally:
        get_example_settings.cache_clear()
        site.stop()
        mail.stop()


def run(job: object, payload: dict[str, object]) -> JobInfo:
    # Strict mode as the test helpers run it, with a tighter block limit.
    with inline_engine(strict=StrictMode(block_threshold=0.5)) as engine:
        assert engine.strict is not None
        return wait_for_job(dispatch_job(job, payload).job_id, timeout=60)


def test_the_example_jobs_run_in_strict_mode(fakes: tuple[MediaSite, MailServer]) -> None:
    site, mail = fakes
    user = store.create_user("ada@example.com", "Ada")

    for job in (send_welcome, send_followup):
        info = run(job, {"user_id": user.id})
        assert info.status == "succeeded", info.error
        assert info.attempts == 2  # the mail API's 503 was retried, under strict mode too
    assert len(mail.messages_to("ada@example.com")) == 2

    info = run(nightly_sync, {"per_page": 5})
    assert info.status == "succeeded", info.error
    assert (info.result.pages, info.result.episodes) == (3, 12)

    episode = site.episodes["ep1"]
    info = run(resolve_episode, {"url": site.page_url(episode)})
    assert info.status == "succeeded", info.error
    assert info.result.title == episode.title
