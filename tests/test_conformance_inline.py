"""The engine conformance suite on the inline engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobkit_dispatch.conformance import EngineConformance, Harness
from jobkit_dispatch.conformance.suite import requires
from jobkit_dispatch.testing import InlineEngine, ManualClock


class TestInlineConformance(EngineConformance):
    @pytest.fixture
    def harness(self) -> Iterator[Harness]:
        harness = Harness.inline()  # strict: the suite's jobs keep Temporal's rules too
        yield harness
        harness.engine.close()


def test_the_suite_excuses_only_what_an_engine_disclaims() -> None:
    class NoDelays(InlineEngine):
        supports_delay = False

    engine = NoDelays(clock=ManualClock())
    try:
        harness = Harness(engine)
        requires(harness, "supports_progress")  # claimed: the test runs
        with pytest.raises(pytest.skip.Exception, match="does not declare supports_delay"):
            requires(harness, "supports_delay")
    finally:
        engine.close()
