"""What the `jobkit` commands share: the `--import` option and loading job modules."""

from __future__ import annotations

import os
import sys

import click

from jobkit.errors import ConfigurationError
from jobkit.settings import get_settings
from jobkit_engine import import_job_modules

import_option = click.option(
    "--import",
    "-i",
    "modules",
    multiple=True,
    metavar="MODULE",
    help="Job module to import (repeatable); default: JOBKIT_JOB_MODULES.",
)


def load_jobs(modules: tuple[str, ...]) -> list[str]:
    """Import the job modules (which also register their queues); returns their names."""
    # As `python -m` does: a job module next to where the command is run is importable.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        names = list(modules) or get_settings().job_modules
        import_job_modules(names)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from exc
    return names
