"""The code in docs/testing.md runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "docs" / doc).read_text(), re.DOTALL)


def test_testing_guide_examples_pass(tmp_path: Path) -> None:
    pytest_example, plain_example, suite_example = _python_blocks("testing.md")
    (tmp_path / "test_welcome.py").write_text(pytest_example)
    (tmp_path / "test_engine.py").write_text(suite_example)
    (tmp_path / "plain.py").write_text(
        "import test_welcome\n" + plain_example + "assert info.status == 'succeeded'\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    passed = re.search(r"(\d+) passed", run.stdout)
    assert passed and int(passed.group(1)) > 20  # the two guide tests and the whole suite
    plain = subprocess.run(
        [sys.executable, "plain.py"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert plain.returncode == 0, plain.stderr
