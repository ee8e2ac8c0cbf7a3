"""The public names are exactly the documented ones."""

from __future__ import annotations

import jobkit_dispatch
import jobkit_engine

DOCUMENTED_ENGINE_API = {"job", "JobContext", "Retry", "NonRetryableError"}
DOCUMENTED_DISPATCH_API = {"dispatch_job", "adispatch_job", "get_job", "cancel_job"}


def test_documented_names_are_exported() -> None:
    assert set(jobkit_engine.__all__) >= DOCUMENTED_ENGINE_API
    assert set(jobkit_dispatch.__all__) >= DOCUMENTED_DISPATCH_API


def test_all_lists_only_real_names() -> None:
    for module in (jobkit_engine, jobkit_dispatch):
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert not missing, (module.__name__, missing)
