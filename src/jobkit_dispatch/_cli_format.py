"""How the job commands print for people (`--json` prints the data itself instead)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic_core import to_jsonable_python

from jobkit_dispatch.engines.recovery import JobDetail
from jobkit_engine import JobError, JobInfo

ERROR_WIDTH = 80  # the error's one line in a table is cut here

_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, now: datetime) -> datetime:
    """`1h`, `30m`, `2d` (that long before `now`; units s, m, h, d, w) or an ISO 8601 time
    with its time zone (`2026-12-01T10:00Z`). Raises `ValueError` otherwise: a time with no
    zone means a different instant on each machine, so it is refused, not guessed."""
    ago = _AGO.match(text)
    if ago:
        return now - timedelta(**{_UNITS[ago.group(2)]: float(ago.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (30m, 1h, 2d) nor an ISO 8601 time"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add one, e.g. {text}Z or {text}+01:00")
    return when.astimezone(UTC)


def dumps(document: Any) -> str:
    """`document` (dataclasses, datetimes, models) as JSON text, datetimes in ISO 8601; a
    value JSON has no form for (an engine's extra detail) as its `str`, never an error."""
    return json.dumps(to_jsonable_python(document, fallback=str), indent=2)


def when(at: datetime | None) -> str:
    return "-" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def one_line(error: JobError | None, width: int = ERROR_WIDTH) -> str:
    """`Type: message`, its first line, cut to `width`."""
    if error is None:
        return ""
    text = f"{error.type}: {error.message}".splitlines()[0] if error.message else error.type
    return text if len(text) <= width else text[: width - 1] + "…"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Left-aligned columns as wide as their widest cell; the last one is not padded."""
    rows = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(headers) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in rows
    ]


def job_at(info: JobInfo) -> datetime | None:
    """The time the listing order uses: created for an open job, finished for an ended one."""
    return info.finished_at if info.is_terminal else info.created_at


def job_rows(jobs: Iterable[JobInfo]) -> list[str]:
    headers = ("JOB ID", "NAME", "QUEUE", "ENGINE", "STATUS", "ATTEMPTS", "WHEN (UTC)", "ERROR")
    return table(
        headers,
        (
            (
                info.job_id,
                info.job_name,
                info.queue,
                info.engine,
                info.status.value,
                f"{info.attempts}/{info.max_attempts}",
                when(job_at(info)),
                one_line(info.error),
            )
            for info in jobs
        ),
    )


def _span(start: datetime | None, end: datetime | None) -> str:
    return f"{when(start)} → {when(end)}"


def detail_lines(detail: JobDetail) -> list[str]:
    """`jobkit show`: the job, its attempts, the step timeline, the traceback, the payload
    and the result."""
    info = detail.info
    lines = [
        f"job       {info.job_id}",
        f"name      {info.job_name} (queue {info.queue})",
        f"status    {info.status.value} on {info.engine}"
        + (f" (reason: {info.reason})" if info.reason else ""),
        f"attempts  {info.attempts} of {info.max_attempts}, retried {detail.retries} time(s)",
        f"created   {when(info.created_at)}   started {when(info.started_at)}   "
        f"finished {when(info.finished_at)} (UTC)",
    ]
    if info.scheduled_for is not None:
        lines.append(f"due       {when(info.scheduled_for)}")
    if info.progress is not None:
        message = f" {info.progress.message}" if info.progress.message else ""
        lines.append(f"progress  {info.progress.fraction:.0%}{message}")
    if info.error is not None:
        lines.append(f"error     {one_line(info.error, 200)}")
    lines += ["", "attempts", *_indented(_attempt_rows(detail)), "", "steps"]
    lines += _indented(_step_rows(detail))
    traceback = _traceback(detail)
    if traceback:
        lines += ["", "traceback", *_indented(traceback.rstrip().splitlines())]
    lines += ["", "payload", *_indented(dumps(detail.payload).splitlines())]
    if info.is_terminal and info.status.value == "succeeded":
        lines += ["", "result", *_indented(dumps(info.result).splitlines())]
    return lines


def _indented(lines: list[str]) -> list[str]:
    return [f"  {line}" for line in lines] or ["  (none recorded)"]


def _attempt_rows(detail: JobDetail) -> list[str]:
    if not detail.attempts:
        return []
    return table(
        ("#", "OUTCOME", "STARTED → FINISHED", "ERROR"),
        (
            (str(a.number), a.outcome, _span(a.started_at, a.finished_at), one_line(a.error))
            for a in detail.attempts
        ),
    )


def _step_rows(detail: JobDetail) -> list[str]:
    if not detail.steps:
        return []
    return table(
        ("STEP", "KIND", "OUTCOME", "STARTED → FINISHED (a sleep: wakes)", "ERROR"),
        (
            (
                s.step_id,
                s.kind,
                s.outcome.value,
                _span(s.started_at, s.finished_at),
                one_line(s.error),
            )
            for s in detail.steps
        ),
    )


def _traceback(detail: JobDetail) -> str | None:
    """The traceback of the job's error (the last attempt's, kept while a retry waits):
    its own, else that of the step that failed with it. None once the job is past it."""
    error = detail.info.error
    if error is None:
        return None
    failed = [s.error for s in detail.steps if s.error is not None and s.error.traceback]
    return error.traceback or (failed[-1].traceback if failed else None)


def counts(per_engine: dict[str, int]) -> str:
    """`rq: 3, temporal: 2`, or `none`."""
    return ", ".join(f"{name}: {n}" for name, n in sorted(per_engine.items())) or "none"
