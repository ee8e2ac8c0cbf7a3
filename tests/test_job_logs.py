"""One `jobkit.jobs` line per job outcome, in the same words on every engine.

Each engine runs the jobs of `tests.joblog_jobs` — one succeeds, one fails then succeeds,
one fails for good, one is cancelled while it runs, one sleeps durably — and the lines
are read back as JSON: from a real `jobkit worker` process with `JOBKIT_LOG_FORMAT=json`
(RQ), and from the records of an in-process worker (Temporal, replaying every workflow
task, so that a line logged again on replay would show; inline).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from jobkit import JobkitSettings
from jobkit.connection import get_redis
from jobkit.logs import JsonFormatter, configure_logging
from jobkit_dispatch import cancel_job, dispatch_job
from jobkit_dispatch._children import Child
from jobkit_dispatch.conformance._files import count
from jobkit_dispatch.engines.rq import RQEngine
from jobkit_dispatch.testing import RedisServer, inline_engine, use_engine, wait_for_job
from jobkit_dispatch.testing.rq_worker import WorkerProcess
from jobkit_dispatch.testing.temporal_server import TemporalDevServer
from jobkit_engine import JobError, JobStatus, ManualClock
from jobkit_engine.runtime import JOB_LOGGER, Finish, RunAgain, log_outcome
from tests import joblog_jobs
from tests.joblog_jobs import EXPECTED, QUEUE, SECRET, URL_PASSWORD
from tests.waiting import eventually

JOBS = (
    joblog_jobs.ok,
    joblog_jobs.flaky,
    joblog_jobs.broken,
    joblog_jobs.hangs,
    joblog_jobs.sleeper,
)


def run_every_outcome(workdir: str, timeout: float = 30.0) -> dict[str, str]:
    """Dispatch one job of each kind, cancel the one that hangs once it runs, wait for all
    to end; {job name: job id}."""
    ids = {fn.name: dispatch_job(fn, {"workdir": workdir}).job_id for fn in JOBS}
    eventually(lambda: count(workdir, "waiting") == 1, timeout=timeout)
    assert cancel_job(ids["joblogs.hangs"])
    statuses = {name: wait_for_job(job_id, timeout=timeout).status for name, job_id in ids.items()}
    assert statuses == {
        "joblogs.ok": JobStatus.SUCCEEDED,
        "joblogs.flaky": JobStatus.SUCCEEDED,
        "joblogs.broken": JobStatus.FAILED,
        "joblogs.hangs": JobStatus.CANCELLED,
        "joblogs.sleeper": JobStatus.SUCCEEDED,
    }
    return ids


def check_lines(lines: list[dict[str, Any]], ids: dict[str, str], engine: str) -> None:
    """The job lines (parsed JSON objects) say what each job did, and nothing more."""
    by_job = {
        name: [line for line in lines if line["job_id"] == job_id] for name, job_id in ids.items()
    }
    assert {name: [line["outcome"] for line in got] for name, got in by_job.items()} == EXPECTED
    for name, got in by_job.items():
        for line in got:
            assert (line["logger"], line["job_name"], line["queue"]) == (JOB_LOGGER, name, QUEUE)
            assert line["engine"] == engine
            assert line["duration"] >= 0, line
    (ok,) = by_job["joblogs.ok"]
    assert (ok["level"], ok["attempt"]) == ("INFO", 1)
    assert ok["message"].startswith(
        f"job {ids['joblogs.ok']} succeeded: joblogs.ok queue={QUEUE} engine={engine} attempt=1 "
        "duration="
    )
    retrying, succeeded = by_job["joblogs.flaky"]
    assert (retrying["level"], retrying["attempt"], succeeded["attempt"]) == ("WARNING", 1, 2)
    assert retrying["retry_in"] == pytest.approx(0.2)
    assert retrying["error_type"] == "ValueError"
    masked = "ValueError: first try while calling redis://***@db:6379/0"
    assert retrying["error"] == masked
    assert " retrying in 0.2s: " in retrying["message"]
    assert retrying["message"].endswith(f" error={masked}")
    assert "error" not in succeeded
    (failed,) = by_job["joblogs.broken"]
    assert (failed["level"], failed["attempt"]) == ("ERROR", 1)
    assert failed["error"] == "NonRetryableError: broken for good"
    (cancelled,) = by_job["joblogs.hangs"]
    assert (cancelled["level"], cancelled["attempt"]) == ("INFO", 1)
    asleep, woke = by_job["joblogs.sleeper"]
    wake_at = datetime.fromisoformat(asleep["wake_at"])
    assert wake_at.tzinfo is not None
    assert f" sleeping until {asleep['wake_at']}: " in asleep["message"]
    assert (asleep["attempt"], woke["attempt"]) == (1, 1)  # a sleep does not count as one


def no_secrets(text: str) -> None:
    assert SECRET not in text
    assert URL_PASSWORD not in text


def as_json(records: list[logging.LogRecord]) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in records if r.name == JOB_LOGGER]


# -- the line itself -------------------------------------------------------------------------


def _record_of(decision: Any, **overrides: Any) -> logging.LogRecord:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tests.joblogs.unit")
    logger.addHandler(Keep())
    logger.setLevel(logging.DEBUG)
    fields: dict[str, Any] = dict(
        job_id="j1", job_name="a.job", queue="q", engine="rq", attempt=3, duration=1.23456
    )
    fields.update(overrides)
    try:
        log_outcome(decision, now=datetime(2030, 1, 1, tzinfo=UTC), logger=logger, **fields)
    finally:
        logger.handlers.clear()
    (record,) = records
    return record


def test_an_error_is_one_line_cut_short() -> None:
    error = JobError("OSError", "line one\n  line two " + "x" * 500, "Traceback: secret stuff")
    record = _record_of(Finish(JobStatus.FAILED, error=error))
    summary = record.error  # type: ignore[attr-defined]
    assert summary.startswith("OSError: line one line two xxx") and summary.endswith("…")
    assert len(summary) == 200
    assert "\n" not in record.getMessage() and "Traceback" not in record.getMessage()
    assert record.getMessage() == (
        f"job j1 failed: a.job queue=q engine=rq attempt=3 duration=1.235s error={summary}"
    )


def test_a_percent_sign_in_an_error_is_not_a_format() -> None:
    error = JobError("ValueError", "100% broken %s %d")
    record = _record_of(
        RunAgain(JobStatus.SCHEDULED, at=datetime(2030, 1, 1, 0, 0, 4, tzinfo=UTC), error=error)
    )
    assert record.getMessage().endswith("error=ValueError: 100% broken %s %d")
    assert "retrying in 4.0s" in record.getMessage()


def test_interrupted_and_no_attempt_or_duration() -> None:
    record = _record_of(RunAgain(JobStatus.QUEUED, resume=True), attempt=None, duration=None)
    assert record.getMessage() == "job j1 interrupted: a.job queue=q engine=rq"
    assert (record.levelno, record.outcome, record.duration) == (
        logging.WARNING,
        "interrupted",
        None,
    )  # type: ignore[attr-defined]


def test_json_lines_carry_the_fields_and_the_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.joblogs.json")
    logger.addHandler(handler)
    try:
        logger.warning("plain %s", "line", extra={"job_id": "j2", "when": datetime(2030, 1, 1)})
        try:
            raise KeyError("boom")
        except KeyError:
            logger.exception("with a traceback")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (first["message"], first["level"], first["logger"]) == (
        "plain line",
        "WARNING",
        logger.name,
    )
    assert (first["job_id"], first["when"]) == ("j2", "2030-01-01 00:00:00")
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert "KeyError: 'boom'" in second["exc_info"]


def test_configure_logging_follows_the_setting_and_leaves_an_application_setup_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    assert JobkitSettings(log_format="JSON").log_format == "json"
    stream = io.StringIO()
    configure_logging(JobkitSettings(log_format="json").log_format, stream=stream)
    (handler,) = root.handlers
    assert isinstance(handler.formatter, JsonFormatter)
    assert root.level == logging.INFO
    configure_logging("text", stream=stream)  # configured already: nothing changes
    assert root.handlers == [handler]


def test_a_supervisor_relays_json_lines_as_they_are(capsys: pytest.CaptureFixture[str]) -> None:
    """`jobkit worker --engine all` and `jobkit dev` print their children's lines with the
    child's name in front, except JSON lines, which a log shipper must read as they are."""
    line = '{"level": "INFO", "logger": "jobkit.jobs"}'
    for log_format, expected in (("json", line), ("text", f"[rq-worker] {line}")):
        env = {**os.environ, "JOBKIT_LOG_FORMAT": log_format}
        child = Child("rq-worker", [sys.executable, "-c", f"print({line!r})"], env)
        child.process.wait(30)
        assert child.stop() == 0
        assert capsys.readouterr().out == expected + "\n"


# -- inline ----------------------------------------------------------------------------------


def test_inline_logs_each_outcome(caplog: pytest.LogCaptureFixture, workdir: str) -> None:
    caplog.set_level(logging.INFO, logger=JOB_LOGGER)
    with inline_engine(ManualClock(), sleep_threshold=timedelta(seconds=1)):
        ids = run_every_outcome(workdir)
    check_lines(as_json(caplog.records), ids, "inline")
    no_secrets(caplog.text)


# -- RQ: a real worker process, logging JSON --------------------------------------------------


@pytest.fixture
def rq_engine(jobkit_redis_server: RedisServer) -> Iterator[RQEngine]:
    redis.Redis.from_url(jobkit_redis_server.url).flushdb()
    settings = JobkitSettings(redis_url=jobkit_redis_server.url)
    engine = RQEngine(get_redis(settings=settings), settings=settings)
    with use_engine(engine):
        yield engine


def test_an_rq_worker_logs_each_outcome_as_json(
    rq_engine: RQEngine, jobkit_redis_server: RedisServer, workdir: str
) -> None:
    log = Path(workdir, "worker.log")
    env = {
        "JOBKIT_LOG_FORMAT": "json",
        "JOBKIT_WORKER_HEARTBEAT": "0.3",
        "JOBKIT_SLEEP_THRESHOLD": "1",
    }
    with WorkerProcess(
        jobkit_redis_server.url, [QUEUE], ["tests.joblog_jobs"], env=env, log_path=log
    ):
        ids = run_every_outcome(workdir)
    text = log.read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert any(line["logger"] == "jobkit.worker" for line in lines)  # not only job lines
    check_lines([line for line in lines if line["logger"] == JOB_LOGGER], ids, "rq")
    no_secrets(text)


# -- Temporal: an in-process worker that replays every workflow task --------------------------


@pytest.fixture
def temporal_engine(jobkit_temporal_server: TemporalDevServer) -> Iterator[Any]:
    pytest.importorskip("temporalio")
    from jobkit_dispatch.engines.temporal import TemporalEngine

    engine = TemporalEngine(
        jobkit_temporal_server.address,
        task_queue_prefix="joblogs-test-",
        sleep_threshold=1.0,
        step_heartbeat_timeout=2.0,
    )
    # No workflow is kept in the cache: each task replays the job's history from the start.
    with engine.start_worker([QUEUE], max_cached_workflows=0), use_engine(engine):
        yield engine
    engine.close()


def test_a_temporal_worker_logs_each_outcome_once(
    temporal_engine: Any, caplog: pytest.LogCaptureFixture, workdir: str
) -> None:
    caplog.set_level(logging.INFO, logger=JOB_LOGGER)
    ids = run_every_outcome(workdir)
    lines = as_json(caplog.records)
    check_lines(lines, ids, "temporal")
    workflow_ids = {line["temporal_workflow"]["workflow_id"] for line in lines}
    assert workflow_ids == set(ids.values())
    no_secrets(caplog.text)
