"""The example's job services. Workers import this package (`--import examples.app.jobs`)
so that every job below is registered; the web app imports it to dispatch by reference."""

from examples.app.jobs.emails import send_followup, send_welcome
from examples.app.jobs.episodes import resolve_episode
from examples.app.jobs.sync import nightly_sync

__all__ = ["nightly_sync", "resolve_episode", "send_followup", "send_welcome"]
