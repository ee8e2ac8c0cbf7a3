"""Fixtures shared by the test modules (jobkit's own fixtures come from its pytest plugin)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def workdir(tmp_path: Path) -> str:
    """A directory for the files through which jobs signal the test (see conformance)."""
    return str(tmp_path)
