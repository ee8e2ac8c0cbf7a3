"""The engine conformance suite on the inline engine."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobkit_dispatch.conformance import EngineConformance, Harness


class TestInlineConformance(EngineConformance):
    @pytest.fixture
    def harness(self) -> Iterator[Harness]:
        harness = Harness.inline()
        yield harness
        harness.engine.close()
