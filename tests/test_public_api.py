"""The public names are exactly the documented ones."""

from __future__ import annotations

from pathlib import Path

import jobkit_dispatch
import jobkit_engine

DOCUMENTED_ENGINE_API = {"job", "JobContext", "Retry", "NonRetryableError"}
DOCUMENTED_DISPATCH_API = {"dispatch_job", "adispatch_job", "get_job", "cancel_job"}
# docs/operations.md, "When jobs fail": what operators call, each with its async twin.
DOCUMENTED_OPERATOR_API = {
    *(
        f"{prefix}{name}"
        for name in ("list_jobs", "describe_job", "retry_job", "retry_jobs", "purge_jobs")
        for prefix in ("", "a")
    ),
    "JobList",
    "PurgeResult",
    "RetryReport",
}


def test_documented_names_are_exported() -> None:
    assert set(jobkit_engine.__all__) >= DOCUMENTED_ENGINE_API
    assert set(jobkit_dispatch.__all__) >= DOCUMENTED_DISPATCH_API | DOCUMENTED_OPERATOR_API


def test_the_operator_api_is_documented() -> None:
    operations = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    missing = [name for name in DOCUMENTED_OPERATOR_API if f"`{name}" not in operations]
    assert not missing, f"docs/operations.md does not name {missing}"


def test_all_lists_only_real_names() -> None:
    for module in (jobkit_engine, jobkit_dispatch):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, (module.__name__, missing)
