"""The inline engine: jobs run in this process, on its event loop (tests, development)."""

from __future__ import annotations

from jobkit_dispatch.engines.inline.engine import InlineEngine

__all__ = ["InlineEngine"]
