"""The engine conformance suite: the job contract, as tests any engine must pass.

To run it against an engine, subclass `EngineConformance` in a test module and provide a
`harness` fixture; the worker serving the engine must import
`jobkit_dispatch.conformance.jobs`:

```python
import pytest
from jobkit_dispatch.conformance import EngineConformance, Harness

class TestMyEngine(EngineConformance):
    @pytest.fixture
    def harness(self):
        engine = MyEngine(...)
        yield Harness(engine)
        engine.close()
```
"""

from jobkit_dispatch.conformance.harness import Harness
from jobkit_dispatch.conformance.suite import EngineConformance

__all__ = ["EngineConformance", "Harness"]
