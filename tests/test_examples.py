"""The examples run as documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_shows_each_feature() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "to the inline engine" in out
    assert "status=sleeping" in out
    assert "status=succeeded after 2 attempts" in out
    assert "{'load_user': 1, 'send_email': 2}" in out
    assert "reports.monthly: failed at once (1 attempt)" in out
    assert "cancelled: cancelled" in out
    assert "same idempotency key, same job: True" in out
