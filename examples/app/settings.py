"""The example app's own settings (`EXAMPLE_*`), kept apart from jobkit's (`JOBKIT_*`)."""

from __future__ import annotations

from datetime import timedelta
from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class ExampleSettings(BaseSettings):
    """Where the example keeps its data and finds the services it talks to.

    The app, every worker and the cron process read the same variables, so they agree on
    the database file and the media site whichever machine they run on.
    """

    model_config = SettingsConfigDict(env_prefix="EXAMPLE_")

    data_dir: Path = Path(".example-data")
    media_site: str = "http://127.0.0.1:8701"
    mail_api: str = "http://127.0.0.1:8702"
    followup_delay: timedelta = timedelta(days=2)
    sync_cron: str = "0 3 * * *"


@lru_cache
def get_example_settings() -> ExampleSettings:
    return ExampleSettings()
