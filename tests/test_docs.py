"""Every code block in docs/ runs, in order, as a reader following the page would run it.

How a page's blocks are run (see `tests/docs_runner.py`):

- `python` blocks share one namespace per page; top-level `await` works.
- `bash` blocks run with `set -euo pipefail`, in the page's own empty working directory,
  with the project's virtualenv first on PATH.
- A directive in an HTML comment on the line before a block changes that:
  `<!-- doc-test: file=jobs.py -->` writes the block to a file instead (later blocks import
  or run it); `background ready="worker started"` runs a bash block until the page ends,
  after waiting for the text in its output; `raises=UnknownJobError` expects the block to
  raise; `output` checks that the previous block printed each line of this (text) block;
  `timeout=300` gives a slow block more time.
- `<!-- doc-test-env: KEY=VALUE ... -->` anywhere sets environment for the whole page.
- A `text` block with no directive is not code (a diagram, a tree): it is not run.

Each page gets the session's Redis (flushed) and Temporal dev server through
`JOBKIT_REDIS_URL` and `JOBKIT_TEMPORAL_ADDRESS`, and task queues of its own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest
import redis

from jobkit_dispatch.testing import RedisServer
from jobkit_dispatch.testing.temporal_server import TemporalDevServer

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUNNER = Path(__file__).with_name("docs_runner.py")

_FENCE = re.compile(r"^```(\S*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
_PAGE_ENV = re.compile(r"^<!--\s*doc-test-env:\s*(.*?)\s*-->\s*$", re.MULTILINE)
RUNNABLE = {"python", "bash"}


@dataclass
class Block:
    name: str
    lang: str
    code: str
    options: dict[str, str] = field(default_factory=dict)


def _options(text: str) -> dict[str, str]:
    options = {}
    for token in shlex.split(text):
        key, _, value = token.partition("=")
        options[key] = value
    return options


def parse(page: Path) -> list[Block]:
    """The page's fenced blocks with their directives, in order."""
    blocks: list[Block] = []
    lines = page.read_text().splitlines()
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        start = index
        index += 1
        body: list[str] = []
        while index < len(lines) and lines[index].rstrip() != "```":
            body.append(lines[index])
            index += 1
        previous = lines[start - 1] if start else ""
        directive = _DIRECTIVE.match(previous)
        blocks.append(
            Block(
                name=f"{page.name}:{start + 1}",
                lang=fence.group(1),
                code="\n".join(body) + "\n",
                options=_options(directive.group(1)) if directive else {},
            )
        )
        index += 1
    return blocks


def page_env(page: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for match in _PAGE_ENV.finditer(page.read_text()):
        env.update(_options(match.group(1)))
    return env


def is_run(block: Block) -> bool:
    return block.lang in RUNNABLE or bool(block.options)


PAGES = sorted(DOCS.rglob("*.md"))


def test_every_block_is_run_or_is_plain_text() -> None:
    """A block in a language nothing runs would be an untested example."""
    untested = [
        f"{block.name} ({block.lang or 'no language'})"
        for page in PAGES
        for block in parse(page)
        if not is_run(block) and block.lang != "text"
    ]
    assert not untested, "blocks nothing runs; give them a directive: " + ", ".join(untested)


def test_the_parser_sees_directives(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- doc-test-env: A=1 B=two -->\n"
        "```python\nx = 1\n```\n\n"
        '<!-- doc-test: file=pkg/jobs.py timeout=5 ready="a b" -->\n'
        "```python\ny = 2\n```\n"
        "```text\ndiagram\n```\n"
    )
    blocks = parse(page)
    assert [b.code for b in blocks] == ["x = 1\n", "y = 2\n", "diagram\n"]
    assert blocks[1].options == {"file": "pkg/jobs.py", "timeout": "5", "ready": "a b"}
    assert page_env(page) == {"A": "1", "B": "two"}
    assert [is_run(b) for b in blocks] == [True, True, False]


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_runs(
    page: Path,
    tmp_path: Path,
    jobkit_redis_server: RedisServer,
    jobkit_temporal_server: TemporalDevServer,
) -> None:
    blocks = [asdict(block) for block in parse(page) if is_run(block)]
    if not blocks:
        pytest.skip(f"{page.name} has no code")
    redis.Redis.from_url(jobkit_redis_server.url).flushall()
    # The quickstart installs jobkit from a checkout in ./jobkit: this one.
    (tmp_path / "jobkit").symlink_to(ROOT, target_is_directory=True)
    plan = tmp_path / ".plan.json"
    plan.write_text(json.dumps(blocks))
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        # This checkout's code, also where the installed jobkit is another checkout's.
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT / "src")]),
        "JOBKIT_REDIS_URL": jobkit_redis_server.url,
        "JOBKIT_TEMPORAL_ADDRESS": jobkit_temporal_server.address,
        "JOBKIT_TEMPORAL_TASK_QUEUE_PREFIX": f"docs-{uuid.uuid4().hex[:8]}-",
        "DOCS_ROOT": str(ROOT),
        **page_env(page),
    }
    run = subprocess.run(
        [sys.executable, str(RUNNER), str(plan)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"


_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def test_relative_links_point_at_files() -> None:
    broken = [
        f"{page.relative_to(ROOT)} -> {target}"
        for page in [*PAGES, ROOT / "README.md", ROOT / "examples" / "README.md"]
        for target in _LINK.findall(page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    ]
    assert not broken, broken


def test_the_index_links_every_page() -> None:
    index = (DOCS / "index.md").read_text()
    missing = [
        str(page.relative_to(DOCS))
        for page in PAGES
        if page.name != "index.md" and f"]({page.relative_to(DOCS)})" not in index
    ]
    assert not missing, f"docs/index.md does not link {missing}"
