"""`jobkit list / show / retry / cancel / purge` over two engines (in-memory engines with
the operator capabilities, `tests/operator_fakes.py`): every `--json` parsed, the exit
codes, the confirmations, an engine that is down, and a cursor walk."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import tests.jobs
from jobkit.errors import CorruptJobError
from jobkit_dispatch import dispatch_job, set_dispatcher
from jobkit_dispatch._cli_format import parse_when
from jobkit_dispatch.cli import main
from jobkit_dispatch.engines.inline import InlineEngine
from jobkit_dispatch.engines.recovery import ListPosition
from jobkit_dispatch.testing import wait_for_job
from jobkit_engine import JobStatus
from tests.operator_fakes import EnginesDispatcher, FakeEngine, job

FAILED, SUCCEEDED, QUEUED, CANCELLED = (
    JobStatus.FAILED,
    JobStatus.SUCCEEDED,
    JobStatus.QUEUED,
    JobStatus.CANCELLED,
)


@pytest.fixture
def engines() -> Iterator[tuple[FakeEngine, FakeEngine]]:
    """`rq` and `temporal` holding failed, succeeded and queued jobs, interleaved in time;
    `temporal` examines at most 3 jobs per page, so its pages end at frontiers."""
    statuses = itertools.cycle([FAILED, SUCCEEDED, QUEUED])
    rq = FakeEngine("rq", [job(f"rq-{n}", 2 * n, next(statuses)) for n in range(6)])
    temporal = FakeEngine(
        "temporal", [job(f"tm-{n}", 2 * n + 1, next(statuses)) for n in range(6)], budget=3
    )
    previous = set_dispatcher(EnginesDispatcher(rq, temporal))
    try:
        yield rq, temporal
    finally:
        set_dispatcher(previous)


def jobkit(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input)


def parsed(result: Result) -> Any:
    """The one JSON document on stdout."""
    return json.loads(result.stdout)


def _failed(*engines: FakeEngine) -> set[str]:
    return {i.job_id for e in engines for i in e.jobs.values() if i.status == FAILED}


# -- list ---------------------------------------------------------------------------------


def test_list_json_is_one_document_in_the_listing_order(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    result = jobkit("list", "--json")
    assert result.exit_code == 0, result.output
    page = parsed(result)
    assert set(page) == {"jobs", "cursor", "unavailable"} and page["unavailable"] == {}
    every = sorted((i for e in engines for i in e.jobs.values()), key=ListPosition.of)
    assert [j["job_id"] for j in page["jobs"]] == [i.job_id for i in every]
    first = page["jobs"][0]
    assert first["status"] == "queued" and first["engine"] in {"rq", "temporal"}
    assert datetime.fromisoformat(first["created_at"]).tzinfo is not None
    assert page["cursor"] is None


def test_a_cursor_walk_lists_every_job_once(engines: tuple[FakeEngine, FakeEngine]) -> None:
    seen: list[str] = []
    args = ["list", "--json", "--limit", "2"]
    for _ in range(20):
        page = parsed(jobkit(*args))
        assert len(page["jobs"]) <= 2
        seen += [j["job_id"] for j in page["jobs"]]
        if page["cursor"] is None:
            break
        args = ["list", "--json", "--limit", "2", "--cursor", page["cursor"]]
    every = sorted((i for e in engines for i in e.jobs.values()), key=ListPosition.of)
    assert seen == [i.job_id for i in every]


def test_list_shows_a_table_with_the_engine_and_the_error_on_one_line(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    result = jobkit("list", "--status", "failed", "--limit", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["JOB", "ID", "NAME", "QUEUE"]
    rows = [line for line in lines[1:] if line.startswith(("rq-", "tm-"))]
    assert len(rows) == 3
    assert all("ValueError: upstream said no" in row for row in rows)
    assert "second line" not in result.stdout
    assert {row.split()[3] for row in rows} == {"rq", "temporal"}
    assert lines[-1].startswith("more: add --cursor ")


def test_list_filters(engines: tuple[FakeEngine, FakeEngine]) -> None:
    rq, _ = engines
    rq.jobs["odd"] = job("odd", 30, FAILED, engine="rq", name="tests.odd", queue="data_sync")
    by_name = parsed(jobkit("list", "--json", "--name", "tests.odd"))["jobs"]
    by_queue = parsed(jobkit("list", "--json", "--queue", "data_sync"))["jobs"]
    assert [j["job_id"] for j in by_name] == [j["job_id"] for j in by_queue] == ["odd"]
    only = parsed(jobkit("list", "--json", "--engine", "temporal", "--limit", "50"))["jobs"]
    assert {j["engine"] for j in only} == {"temporal"} and len(only) == 6
    window = parsed(
        jobkit("list", "--json", "--since", "2026-12-01T10:04Z", "--until", "2026-12-01T10:08Z")
    )["jobs"]
    times = [j["finished_at"] or j["created_at"] for j in window]
    assert window and all("10:04" <= t[11:16] < "10:08" for t in times)


def test_an_engine_that_is_down_is_reported_not_a_traceback(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    _, temporal = engines
    temporal.down = "Temporal at 127.0.0.1:7233 did not answer (circuit open)"
    human = jobkit("list")
    assert human.exit_code == 3
    assert "warning: temporal was not listed: Temporal at 127.0.0.1:7233" in human.stderr
    assert "Traceback" not in human.output and "rq-0" in human.stdout
    page = parsed(jobkit("list", "--json"))
    assert page["unavailable"] == {"temporal": temporal.down}
    assert {j["engine"] for j in page["jobs"]} == {"rq"}


def test_usage_errors_exit_2(engines: tuple[FakeEngine, FakeEngine]) -> None:
    assert jobkit("list", "--cursor", "nonsense").exit_code == 2
    assert jobkit("list", "--since", "yesterday").exit_code == 2
    no_zone = jobkit("list", "--since", "2026-12-01T10:00")
    assert no_zone.exit_code == 2 and "no time zone" in no_zone.stderr
    assert jobkit("list", "--engine", "nope").exit_code == 2
    assert jobkit("retry").exit_code == 2
    assert jobkit("retry", "rq-0", "--failed").exit_code == 2
    assert jobkit("retry", "rq-0", "--yes").exit_code == 2
    assert jobkit("purge", "default", "--status", "queued").exit_code == 2


def test_since_takes_a_duration_or_a_zoned_time() -> None:
    now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    assert parse_when("1h", now) == now - timedelta(hours=1)
    assert parse_when("90m", now) == now - timedelta(minutes=90)
    assert parse_when("2d", now) == now - timedelta(days=2)
    assert parse_when("2026-12-01T11:00+01:00", now) == datetime(2026, 12, 1, 10, tzinfo=UTC)
    for bad in ("soon", "1y", "2026-12-01"):
        with pytest.raises(ValueError, match=r"duration|time zone"):
            parse_when(bad, now)


# -- show ---------------------------------------------------------------------------------


def test_show_json_and_human(engines: tuple[FakeEngine, FakeEngine]) -> None:
    result = jobkit("show", "tm-0", "--json")
    assert result.exit_code == 0, result.output
    detail = parsed(result)
    assert set(detail) == {"info", "payload", "attempts", "steps", "retries", "extra"}
    assert detail["info"]["engine"] == "temporal" and detail["payload"] == {"pages": 2}
    assert [(s["step_id"], s["outcome"]) for s in detail["steps"]] == [
        ("page-0", "succeeded"),
        ("page-1", "failed"),
    ]
    assert detail["attempts"][0]["error"]["type"] == "ValueError"
    human = jobkit("show", "tm-0").stdout
    assert "status    failed on temporal (reason: forced)" in human
    assert "page-1  run   failed" in human and "Traceback …" in human


def test_show_of_an_unknown_job_exits_1_and_of_an_unreachable_one_3(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    missing = jobkit("show", "nope", "--json")
    assert missing.exit_code == 1
    assert parsed(missing)["error"]["type"] == "JobNotFoundError"
    engines[1].down = "refused"
    unreachable = jobkit("show", "nope")
    assert unreachable.exit_code == 3 and "error: refused" in unreachable.stderr


# -- retry --------------------------------------------------------------------------------


def test_retry_by_id(engines: tuple[FakeEngine, FakeEngine]) -> None:
    rq, temporal = engines
    result = jobkit("retry", "rq-0", "tm-0", "--json")
    assert result.exit_code == 0, result.output
    report = parsed(result)
    assert [(j["job_id"], j["engine"], j["status"]) for j in report["retried"]] == [
        ("rq-0", "rq", "queued"),
        ("tm-0", "temporal", "queued"),
    ]
    assert rq.retries == {"rq-0": 1} and temporal.retries == {"tm-0": 1}
    again = jobkit("retry", "rq-0", "rq-3", "nope")
    assert again.exit_code == 1
    assert "rq-3: retried on rq, now queued" in again.stdout
    assert "job 'rq-0' is queued: only a failed or cancelled job" in again.stderr
    assert "no job with id 'nope'" in again.stderr


def test_bulk_retry_asks_first_and_retries_nothing_when_declined(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    rq, temporal = engines
    declined = jobkit("retry", "--failed", input="n\n")
    assert declined.exit_code == 1
    assert "4 failed job(s) match (rq: 2, temporal: 2)" in declined.output
    assert "Retry these 4 jobs?" in declined.stderr
    assert not rq.retries and not temporal.retries
    accepted = jobkit("retry", "--failed", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert "retried 4 (rq: 2, temporal: 2)" in accepted.stdout
    assert set(rq.retries) | set(temporal.retries) == {"rq-0", "rq-3", "tm-0", "tm-3"}


def test_bulk_retry_json_dry_run_and_yes(engines: tuple[FakeEngine, FakeEngine]) -> None:
    rq, temporal = engines
    dry = jobkit("retry", "--failed", "--engine", "rq", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    report = parsed(dry)
    assert report["dry_run"] is True and report["matched"] == 2 and report["retried"] == {}
    assert {j["job_id"] for j in report["jobs"]} == {"rq-0", "rq-3"} and not rq.retries
    done = jobkit("retry", "--failed", "--since", "2026-12-01T10:05Z", "--yes", "--json")
    assert done.exit_code == 0, done.output
    report = parsed(done)
    assert report["matched"] == 2 and report["retried"] == {"rq": 1, "temporal": 1}
    assert "2 failed job(s) match" in done.stderr and "Retry these" not in done.stderr
    assert set(rq.retries) | set(temporal.retries) == {"rq-3", "tm-3"}


def test_bulk_retry_with_an_engine_down_exits_3_and_retries_the_rest(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    rq, temporal = engines
    temporal.down = "refused"
    result = jobkit("retry", "--failed", "--yes", "--json")
    assert result.exit_code == 3
    report = parsed(result)
    assert report["unavailable"] == {"temporal": "refused"} and report["retried"] == {"rq": 2}
    assert set(rq.retries) == {"rq-0", "rq-3"}


def test_bulk_retry_of_cancelled_jobs(engines: tuple[FakeEngine, FakeEngine]) -> None:
    rq, _ = engines
    rq.jobs["gone"] = job("gone", 40, CANCELLED, engine="rq")
    result = jobkit("retry", "--cancelled", "--yes", "--json")
    assert result.exit_code == 0, result.output
    assert [j["job_id"] for j in parsed(result)["jobs"]] == ["gone"]
    assert rq.retries == {"gone": 1}


# -- cancel and purge ---------------------------------------------------------------------


def test_cancel(engines: tuple[FakeEngine, FakeEngine]) -> None:
    rq, temporal = engines
    result = jobkit("cancel", "rq-2", "tm-2", "--json")
    assert result.exit_code == 0, result.output
    report = parsed(result)
    assert [(j["job_id"], j["engine"]) for j in report["cancelled"]] == [
        ("rq-2", "rq"),
        ("tm-2", "temporal"),
    ]
    assert rq.jobs["rq-2"].status == temporal.jobs["tm-2"].status == CANCELLED
    ended = jobkit("cancel", "rq-1", "nope")
    assert ended.exit_code == 1
    assert "rq-1 had already succeeded" in ended.stderr and "nope" in ended.stderr
    temporal.down = "refused"
    assert jobkit("cancel", "nope").exit_code == 3


def test_purge_counts_and_asks(engines: tuple[FakeEngine, FakeEngine]) -> None:
    rq, temporal = engines
    declined = jobkit("purge", "default", "--status", "succeeded", input="n\n")
    assert declined.exit_code == 1
    assert "4 succeeded job(s) in queue 'default'" in declined.output
    assert len(rq.jobs) == len(temporal.jobs) == 6
    result = jobkit("purge", "default", "--status", "succeeded", "--json", input="y\n")
    assert result.exit_code == 0, result.output
    report = parsed(result)
    assert (report["matched"], report["total"]) == (4, 4)
    assert report["purged"] == {"rq": 2, "temporal": 2} and report["unavailable"] == {}
    assert not [i for e in engines for i in e.jobs.values() if i.status == SUCCEEDED]
    nothing = jobkit("purge", "default", "--status", "succeeded")
    assert nothing.exit_code == 0 and "0 succeeded job(s)" in nothing.output


def test_purge_yes_does_not_ask_and_reports_an_engine_down(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    rq, temporal = engines
    temporal.down = "refused"
    result = jobkit("purge", "default", "--status", "failed", "--yes", "--json")
    assert result.exit_code == 3
    report = parsed(result)
    assert report["matched"] is None and report["purged"] == {"rq": 2}
    assert report["unavailable"] == {"temporal": "refused"}
    assert "warning: temporal purged nothing: refused" in result.stderr
    assert _failed(rq) == set() and len(_failed(temporal)) == 2


# -- a real engine ------------------------------------------------------------------------


@pytest.mark.skipif(
    not InlineEngine.supports_listing, reason="the inline engine does not list jobs yet"
)
def test_find_read_fix_and_replay_a_failed_job_on_the_inline_engine(
    jobkit_inline: InlineEngine, workdir: str
) -> None:
    failing = dispatch_job(tests.jobs.three_steps, {"workdir": workdir})
    fine = dispatch_job(tests.jobs.loose, {"data": 1})
    assert wait_for_job(failing.job_id).status == FAILED
    assert wait_for_job(fine.job_id).status == SUCCEEDED

    found = parsed(jobkit("list", "--status", "failed", "--since", "1h", "--json"))
    assert [(j["job_id"], j["engine"]) for j in found["jobs"]] == [(failing.job_id, "inline")]
    assert found["jobs"][0]["error"]["message"] == "upstream said no"
    shown = jobkit("show", failing.job_id)
    assert shown.exit_code == 0, shown.output
    assert "b     run   failed" in shown.stdout and "raise ValueError" in shown.stdout

    Path(workdir, "fixed").touch()
    replayed = jobkit("retry", "--failed", "--name", "tests.three_steps", "--yes")
    assert replayed.exit_code == 0, replayed.output
    assert "retried 1 (inline: 1)" in replayed.stdout
    assert wait_for_job(failing.job_id).status == SUCCEEDED
    # a ran once; b failed twice (two attempts), then ran once more after the fix; c once
    assert Path(workdir, "tally").read_text().split() == ["a", "b", "b", "b", "c"]

    purged = parsed(jobkit("purge", "default", "--status", "succeeded", "--yes", "--json"))
    assert purged["purged"] == {"inline": 2}
    assert parsed(jobkit("list", "--json"))["jobs"] == []


def test_show_json_writes_what_json_has_no_form_for_as_text(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    class RunId:
        def __str__(self) -> str:
            return "run-7"

    rq, _ = engines
    original = rq.describe
    rq.describe = lambda job_id: replace(original(job_id), extra={"run": RunId()})  # type: ignore[method-assign]
    result = jobkit("show", "rq-0", "--json")
    assert result.exit_code == 0, result.output
    assert parsed(result)["extra"] == {"run": "run-7"}


def test_a_record_an_engine_cannot_read_is_an_error_line_not_a_traceback(
    engines: tuple[FakeEngine, FakeEngine],
) -> None:
    rq, _ = engines

    def unreadable(job_id: str, **options: object) -> None:
        raise CorruptJobError(job_id, "field jk_att:1 is not JSON")

    rq.describe = rq.retry = unreadable  # type: ignore[method-assign,assignment]
    shown = jobkit("show", "rq-0")
    assert shown.exit_code == 1 and "Traceback" not in shown.output
    assert "error: job 'rq-0': field jk_att:1 is not JSON" in shown.stderr
    retried = jobkit("retry", "rq-0", "--json")
    assert retried.exit_code == 1 and "jk_att:1" in parsed(retried)["failures"]["rq-0"]
