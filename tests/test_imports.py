"""Engines are optional: importing the job API never imports an engine library."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENGINE_LIBRARIES = {"rq", "temporalio", "redis"}


def _imported_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return set(out.stdout.split())


def test_job_api_imports_no_engine() -> None:
    assert not ENGINE_LIBRARIES & _imported_after("import jobkit_engine")


@pytest.mark.parametrize("module", ["jobkit", "jobkit_dispatch", "jobkit_dispatch.testing"])
def test_dispatch_and_infrastructure_import_no_engine(module: str) -> None:
    assert not ENGINE_LIBRARIES & _imported_after(f"import {module}")


def test_inline_engine_runs_a_job_without_engine_libraries() -> None:
    # Strict mode reads Temporal's rules from temporalio when it is installed; without it,
    # it still runs (tests/test_strict_mode.py checks that), so it is off here.
    statement = (
        "from jobkit_dispatch.testing import inline_engine, wait_for_job\n"
        "from jobkit_dispatch import dispatch_job\n"
        "import tests.jobs\n"
        "with inline_engine(strict=False):\n"
        "    i = wait_for_job(dispatch_job('tests.greet', {'name': 'x'}).job_id)\n"
        "    assert i.status == 'succeeded', i\n"
    )
    assert not ENGINE_LIBRARIES & _imported_after(f"exec({statement!r})")
