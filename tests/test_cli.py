"""The `jobkit` command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from jobkit_dispatch.cli import main


def test_jobs_lists_what_a_module_registers() -> None:
    result = CliRunner().invoke(main, ["jobs", "--import", "tests.jobs"])
    assert result.exit_code == 0, result.output
    assert "tests.greet" in result.output
    assert "tests.jobs:greet" in result.output


def test_queues_lists_the_builtin_queues() -> None:
    result = CliRunner().invoke(main, ["queues"])
    assert result.exit_code == 0
    for name in ("default", "data_sync", "scheduled"):
        assert name in result.output


def test_run_executes_a_job_inline_and_prints_its_outcome() -> None:
    result = CliRunner().invoke(main, ["run", "tests.greet", '{"name": "ada"}', "-i", "tests.jobs"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["status"], info["result"]["text"]) == ("succeeded", "hello ada")


def test_run_reports_bad_input_clearly() -> None:
    runner = CliRunner()
    bad_payload = runner.invoke(main, ["run", "tests.greet", '{"nom": 1}', "-i", "tests.jobs"])
    assert bad_payload.exit_code != 0
    assert "invalid payload for job 'tests.greet'" in bad_payload.output
    unknown = runner.invoke(main, ["run", "tests.nope", "-i", "tests.jobs"])
    assert "no job named 'tests.nope'" in unknown.output
    missing_module = runner.invoke(main, ["jobs", "-i", "tests.no_such_module"])
    assert "cannot import job module 'tests.no_such_module'" in missing_module.output


def test_worker_refuses_an_unknown_queue() -> None:
    result = CliRunner().invoke(main, ["worker", "--queue", "nope"])
    assert result.exit_code != 0
    assert "unknown queue 'nope'" in result.output


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a process of its own: its registry holds only what it imports."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("JOBKIT_")}
    return subprocess.run(
        [sys.executable, "-m", "jobkit_dispatch.cli", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_worker_without_job_modules_refuses_to_start() -> None:
    result = _cli("worker", "--queue", "default")
    assert result.returncode == 1
    assert "no jobs are registered" in result.stderr
    assert "--import myapp.jobs" in result.stderr


def test_settings_mistakes_are_reported_not_ignored() -> None:
    typo = _cli("jobs", "--import", "tests.jobs", env={"JOBKIT_REDIS_ULR": "redis://x"})
    assert typo.returncode == 0
    assert "JOBKIT_REDIS_ULR is not a jobkit setting (did you mean JOBKIT_REDIS_URL?)" in (
        typo.stderr
    )
    bad = _cli("jobs", env={"JOBKIT_WORKER_HEARTBEAT": "soon"})
    assert bad.returncode == 1
    assert "JOBKIT_WORKER_HEARTBEAT" in bad.stderr and "Traceback" not in bad.stderr
    listed = _cli("jobs", env={"JOBKIT_JOB_MODULES": "tests.jobs,tests.rq_jobs"})
    assert "tests.greet" in listed.stdout, listed.stderr
