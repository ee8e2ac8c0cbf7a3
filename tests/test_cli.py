"""The `jobkit` command line."""

from __future__ import annotations

import json

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
