"""`jobkit list / show / retry / cancel / purge`: find failed jobs, read them, replay them.

Each command works across every engine of the route at once (`--engine` for one) and says
which engine each job is on. `--json` prints one JSON document on stdout (datetimes in
ISO 8601), for scripts; otherwise tables for people, and warnings on stderr. Exit codes:

- 0: done;
- 1: a job was not found, could not be retried or cancelled, or a confirmation was
  declined;
- 2: a usage error (click's);
- 3: an engine did not answer or cannot do this, so the result is partial (3 wins over 1).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import click

from jobkit.durations import utcnow
from jobkit.errors import (
    ConfigurationError,
    EngineUnavailableError,
    JobkitError,
)
from jobkit.queues import default_queues
from jobkit_dispatch import _cli_format as fmt
from jobkit_dispatch._cli_shared import import_option, load_jobs
from jobkit_dispatch._listing import JobList, list_jobs
from jobkit_dispatch._operations import (
    BULK_PAGE_SIZE,
    RetryReport,
    describe_job,
    purge_jobs,
    retry_job,
    retry_jobs,
)
from jobkit_dispatch.engines.recovery import PURGEABLE_STATUSES
from jobkit_engine import JobInfo, JobStatus

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

OK, JOB_FAILED, UNAVAILABLE = 0, 1, 3  # and 2, click's usage error
EXIT_CODES = (
    "Exit status: 0 done; 1 a job was not found, not retried or not cancelled, or the "
    "confirmation was declined; 2 a usage error; 3 an engine did not answer or cannot do "
    "this (a partial result)."
)
FILL_ROUNDS = 5  # times `jobkit list` asks again for a page that came back short


class _When(click.ParamType):
    """`--since 1h` or `--since 2026-12-01T10:00Z`."""

    name = "WHEN"

    def convert(self, value: Any, param: Any, ctx: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return fmt.parse_when(str(value), utcnow())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


WHEN = _When()
_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
_engine_option = click.option(
    "--engine", "-e", metavar="ENGINE", help="Only this engine (default: every engine in use)."
)


def _filters(f: F) -> F:
    """The filters `list` and `retry --failed` share."""
    for option in reversed(
        [
            click.option("--queue", "-q", metavar="QUEUE", help="Only jobs of this queue."),
            click.option("--name", "-n", metavar="JOB", help="Only jobs with this job name."),
            _engine_option,
            click.option(
                "--since",
                type=WHEN,
                help="Only jobs created (open ones) or ended (ended ones) since then: "
                "a duration ago (30m, 1h, 2d) or an ISO 8601 time with its zone.",
            ),
            click.option("--until", type=WHEN, help="Only jobs before then (as --since)."),
        ]
    ):
        f = option(f)
    return f


def _out(as_json: bool, document: Any, lines: Iterable[str] = ()) -> None:
    if as_json:
        click.echo(fmt.dumps(document))
    else:
        for line in lines:
            click.echo(line)


def _warn_unavailable(unavailable: dict[str, str], what: str) -> None:
    for name, cause in sorted(unavailable.items()):
        click.echo(f"warning: {name} {what}: {cause}", err=True)


def _exit(code: int) -> NoReturn:
    sys.exit(code)


def _usage(exc: Exception, hint: str | None = None) -> NoReturn:
    raise click.BadParameter(str(exc), param_hint=hint) from exc


@click.command("list", epilog=EXIT_CODES)
@click.option(
    "--status",
    "-s",
    type=click.Choice([s.value for s in JobStatus]),
    help="Only jobs with this status.",
)
@_filters
@click.option(
    "--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Jobs per page."
)
@click.option("--cursor", help="Where the previous page ended (printed under it).")
@_json_option
def list_command(limit: int, cursor: str | None, as_json: bool, **filters: Any) -> None:
    """List jobs on every engine: open ones first, newest first, then ended ones, most
    recently ended first; each failed job's error on one line."""
    try:
        page = _filled(limit, cursor, filters)
    except ConfigurationError as exc:
        _usage(exc, "--engine")
    except ValueError as exc:
        _usage(exc, "--cursor")
    lines = fmt.job_rows(page.jobs) if page.jobs else ["no jobs match"]
    if page.cursor is not None:
        lines.append(f"more: add --cursor {page.cursor}")
    _out(as_json, asdict(page), lines)
    _warn_unavailable(page.unavailable, "was not listed")
    _exit(UNAVAILABLE if page.unavailable else OK)


def _filled(limit: int, cursor: str | None, filters: dict[str, Any]) -> JobList:
    """Up to `limit` jobs: an engine that spent its work budget returns a short page with
    a cursor, so ask again from there, a few times at most, before showing fewer."""
    jobs: list[JobInfo] = []
    unavailable: dict[str, str] = {}
    for _ in range(FILL_ROUNDS):
        page = list_jobs(limit=limit - len(jobs), cursor=cursor, **filters)
        jobs += page.jobs
        unavailable.update(page.unavailable)
        if page.cursor is None or page.cursor == cursor or len(jobs) >= limit:
            break
        cursor = page.cursor
    return JobList(tuple(jobs), page.cursor, unavailable)


def _error_document(exc: JobkitError) -> dict[str, Any]:
    return {"error": {"type": type(exc).__name__, "message": str(exc)}}


def _code(exc: Exception) -> int:
    return UNAVAILABLE if isinstance(exc, EngineUnavailableError) else JOB_FAILED


@click.command("show", epilog=EXIT_CODES)
@click.argument("job_id")
@_json_option
def show_command(job_id: str, as_json: bool) -> None:
    """Show one job: status, engine and reason, attempts with their errors, the step
    timeline, the error's traceback, the payload and the result."""
    try:
        detail = describe_job(job_id)
    except JobkitError as exc:  # not found, unreadable, engine down
        if as_json:
            click.echo(fmt.dumps(_error_document(exc)))
        else:
            click.echo(f"error: {exc}", err=True)
        _exit(_code(exc))
    _out(as_json, asdict(detail), fmt.detail_lines(detail))


def _each(job_ids: tuple[str, ...], act: Callable[[str], T]) -> tuple[list[T], dict[str, str], int]:
    """`act` on each id: the jobs it returned, the failures by id, and the exit code."""
    done: list[T] = []
    failures: dict[str, str] = {}
    code = OK
    for job_id in job_ids:
        try:
            done.append(act(job_id))
        except JobkitError as exc:  # not found, not retryable, unreadable, engine down
            failures[job_id] = str(exc)
            code = max(code, _code(exc))
    return done, failures, code


@click.command("retry", epilog=EXIT_CODES)
@click.argument("job_ids", nargs=-1, metavar="[JOB_ID]...")
@click.option("--failed", "which", flag_value="failed", help="Every failed job that matches.")
@click.option(
    "--cancelled", "which", flag_value="cancelled", help="Every cancelled job that matches."
)
@_filters
@click.option("--from-scratch", is_flag=True, help="Run completed steps again too.")
@click.option("--dry-run", is_flag=True, help="With --failed: count and list, retry nothing.")
@click.option("--yes", "-y", is_flag=True, help="With --failed: do not ask for confirmation.")
@_json_option
def retry_command(job_ids: tuple[str, ...], which: str | None, **options: Any) -> None:
    """Run failed or cancelled jobs again, from the step that failed: their completed steps
    are not run again (--from-scratch runs them all). Name the jobs, or pick them with
    --failed (or --cancelled) and the filters; a bulk retry shows how many jobs it will
    retry and asks first (--yes does not ask, --dry-run only counts)."""
    bulk = ("queue", "name", "engine", "since", "until", "dry_run", "yes")
    if job_ids and which:
        raise click.UsageError("give JOB_IDs or --failed/--cancelled, not both")
    if job_ids:
        if any(options[key] for key in bulk):
            raise click.UsageError("filters, --dry-run and --yes go with --failed/--cancelled")
        _retry_ids(job_ids, options["from_scratch"], options["as_json"])
    if not which:
        raise click.UsageError("give the JOB_IDs to retry, or --failed (or --cancelled)")
    _retry_bulk(which, **options)


def _retry_ids(job_ids: tuple[str, ...], from_scratch: bool, as_json: bool) -> NoReturn:
    done, failures, code = _each(job_ids, lambda i: retry_job(i, from_scratch=from_scratch))
    lines = [f"{info.job_id}: retried on {info.engine}, now {info.status.value}" for info in done]
    _out(as_json, {"retried": [asdict(info) for info in done], "failures": failures}, lines)
    for job_id, why in failures.items():
        click.echo(f"error: {job_id}: {why}", err=True)
    _exit(code)


def _retry_bulk(
    which: str, *, from_scratch: bool, dry_run: bool, yes: bool, as_json: bool, **filters: Any
) -> NoReturn:
    def confirm(found: RetryReport) -> bool:
        _say_found(found, which, as_json)
        if not found.jobs:
            return False
        return yes or click.confirm(f"Retry these {len(found.jobs)} jobs?", err=True)

    try:
        report = retry_jobs(
            status=which, from_scratch=from_scratch, dry_run=dry_run, confirm=confirm, **filters
        )
    except ConfigurationError as exc:
        _usage(exc, "--engine")
    if dry_run:
        _say_found(report, which, as_json)
    lines = fmt.job_rows(report.jobs) if dry_run and report.jobs else []
    if not report.dry_run:
        lines.append(f"retried {sum(report.retried.values())} ({fmt.counts(report.retried)})")
    _out(as_json, _bulk_document(report), lines)
    for job_id, why in report.failures.items():
        click.echo(f"error: {job_id}: {why}", err=True)
    _warn_unavailable(report.unavailable, "was not listed")
    declined = report.dry_run and not dry_run and report.jobs
    code = JOB_FAILED if report.failures or declined else OK
    _exit(UNAVAILABLE if report.unavailable else code)


def _say_found(found: RetryReport, which: str, as_json: bool) -> None:
    click.echo(
        f"{len(found.jobs)} {which} job(s) match ({fmt.counts(found.matched)})",
        err=as_json,
    )


def _bulk_document(report: RetryReport) -> dict[str, Any]:
    return {
        "dry_run": report.dry_run,
        "matched": len(report.jobs),
        "jobs": [asdict(info) for info in report.jobs],
        "retried": report.retried,
        "failures": report.failures,
        "unavailable": report.unavailable,
    }


@click.command("cancel", epilog=EXIT_CODES)
@click.argument("job_ids", nargs=-1, required=True, metavar="JOB_ID...")
@_json_option
def cancel_command(job_ids: tuple[str, ...], as_json: bool) -> None:
    """Cancel queued, scheduled, sleeping or running jobs (a running one stops at its next
    await). A job that had already ended is left as it is, and exits 1."""
    from jobkit_dispatch._api import cancel_job, get_job

    def cancel(job_id: str) -> tuple[bool, JobInfo]:
        return cancel_job(job_id), get_job(job_id)

    done, failures, code = _each(job_ids, cancel)
    # A running job may still show running: it stops at its next await.
    cancelled = [info for ok, info in done if ok]
    ended = [info for ok, info in done if not ok]
    document = {
        "cancelled": [asdict(i) for i in cancelled],
        "ended": [asdict(i) for i in ended],
        "failures": failures,
    }
    _out(as_json, document, [f"{i.job_id}: cancelled on {i.engine}" for i in cancelled])
    for info in ended:
        click.echo(f"error: {info.job_id} had already {info.status.value}", err=True)
    for job_id, why in failures.items():
        click.echo(f"error: {job_id}: {why}", err=True)
    _exit(max(code, JOB_FAILED if ended else OK))


def _count(queue: str, status: str, engine: str | None) -> tuple[int, dict[str, str]]:
    """How many jobs a purge would delete, walking the listing (purge itself returns how
    many it deleted; this count is for the confirmation)."""
    total, cursor, unavailable = 0, None, {}
    while True:
        page = list_jobs(
            queue=queue, status=status, engine=engine, limit=BULK_PAGE_SIZE, cursor=cursor
        )
        total += len(page.jobs)
        unavailable.update(page.unavailable)
        if page.cursor is None or page.cursor == cursor:
            return total, unavailable
        cursor = page.cursor


@click.command("purge", epilog=EXIT_CODES)
@click.argument("queue")
@click.option(
    "--status",
    "-s",
    required=True,
    type=click.Choice(sorted(s.value for s in PURGEABLE_STATUSES)),
    help="Which ended jobs.",
)
@_engine_option
@click.option("--yes", "-y", is_flag=True, help="Do not count them and ask first.")
@_json_option
@import_option
def purge_command(
    queue: str, status: str, engine: str | None, yes: bool, as_json: bool, modules: tuple[str, ...]
) -> None:
    """Delete QUEUE's ended jobs with STATUS now, instead of when their retention runs
    out, and free their memory. Counts them and asks first, unless --yes."""
    load_jobs(modules)
    if queue not in default_queues:
        click.echo(f"warning: no queue {queue!r} is registered here (--import MODULE?)", err=True)
    document: dict[str, Any] = {"queue": queue, "status": status, "matched": None}
    try:
        if not yes and not _confirm_purge(queue, status, engine, as_json, document):
            _out(as_json, {**document, "purged": {}, "total": 0}, ["nothing purged"])
            declined = JOB_FAILED if document["matched"] else OK
            _exit(UNAVAILABLE if document["unavailable"] else declined)
        result = purge_jobs(queue, status, engine=engine)
    except ConfigurationError as exc:
        _usage(exc, "--engine")
    document.update(asdict(result), total=result.total)
    purged = f"purged {result.total} {status} job(s) of queue {queue!r}"
    _out(as_json, document, [f"{purged} ({fmt.counts(result.purged)})"])
    _warn_unavailable(result.unavailable, "purged nothing")
    _exit(UNAVAILABLE if result.unavailable else OK)


def _confirm_purge(
    queue: str, status: str, engine: str | None, as_json: bool, document: dict[str, Any]
) -> bool:
    """Count what a purge would delete and ask; the count goes into `document`."""
    matched, unavailable = _count(queue, status, engine)
    document.update(matched=matched, unavailable=unavailable)
    click.echo(f"{matched} {status} job(s) in queue {queue!r}", err=as_json)
    _warn_unavailable(unavailable, "was not counted")
    if not matched:
        return False
    return click.confirm(f"Delete these {matched} jobs?", err=True)


JOB_COMMANDS = (list_command, show_command, retry_command, cancel_command, purge_command)
