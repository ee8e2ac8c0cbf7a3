"""`jobkit dev --demo`, the README's demo command, runs the whole stack and succeeds."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.slow
def test_dev_demo_runs_on_rq_then_falls_back_to_temporal() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "jobkit_dispatch.cli", "dev", "--demo"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = run.stdout
    assert run.returncode == 0, out[-3000:] + run.stderr[-3000:]
    redis_up, redis_down = out.split("== Redis stopped")
    assert "-> rq       reason: rq" in redis_up
    assert "-> temporal reason: redis-unhealthy" in redis_down
    assert redis_up.count(" succeeded ") == 3
    assert redis_down.count(" succeeded ") == 2
    assert "demo succeeded" in out
    assert "stack stopped" in out
    assert "[cron] " in out and "cron started with schedules: demo.every-10s" in out
