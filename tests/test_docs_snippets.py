"""Every code block of the documentation (docs/ and README.md) runs, or says why it does not.

One test per page. Its blocks run in order in one temporary folder that holds links to the repository's
``examples/`` and ``.venv/`` (so commands run as written from the repository's root), and the Python
blocks of a page share their globals, as cells of a notebook do:

- ``python`` blocks are executed (top-level ``await`` is allowed: such a block runs in an event loop);
- ``sh``/``bash``/``console`` blocks run as one bash script (``set -euo pipefail``) with the virtual
  environment's ``bin`` first on ``PATH``; a leading ``$ `` prompt is removed;
- ``json`` blocks must parse;
- any other block, or one that must not run, is preceded by ``<!-- not-run: REASON -->`` (the reason is
  required). Blocks for API that is announced but not built yet say ``not-run: pending ...``.

A block that fails names its page and line. Each shell block has a time limit; keep them quick.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
RUNNABLE = {"python", "py", "sh", "bash", "shell", "console", "json"}
SHELL = {"sh", "bash", "shell", "console"}
SHELL_TIMEOUT = 30.0
#: Seconds one block may take at most, on a loaded machine (each takes a few seconds at most on a quiet one).
BLOCK_LIMIT = 60.0
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>\S.*?)\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    language: str
    code: str
    skip_reason: str | None

    @property
    def where(self) -> str:
        name = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{name}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown page, with the not-run marker before each, if any."""
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        fence, indent = match.group("fence"), len(match.group("indent"))
        language = match.group("info").lower().lstrip("{.").rstrip("}")
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        i += 1
        previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(previous.strip())
        found.append(
            Block(
                page, start + 1, language, "\n".join(body) + "\n", marker.group("reason") if marker else None
            )
        )
    return found


def run_python(block: Block, namespace: dict[str, object]) -> None:
    code = compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & 0x80:  # CO_COROUTINE: the block awaits at top level
        asyncio.run(eval(code, namespace))
    else:
        exec(code, namespace)


def run_shell(block: Block, folder: Path) -> None:
    script = "\n".join(line[2:] if line.startswith("$ ") else line for line in block.code.splitlines())
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "120"
    done = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"exit code {done.returncode}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        )


def test_pages_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "docs/index.md", "docs/tutorial.md", "docs/migration.md"} <= names


def test_every_block_runs_or_says_why_not() -> None:
    unmarked = [
        f"{b.where} ({b.language or 'no language'})"
        for page in PAGES
        for b in blocks(page)
        if b.language not in RUNNABLE and b.skip_reason is None
    ]
    assert not unmarked, "mark these blocks <!-- not-run: REASON --> or make them runnable: " + ", ".join(
        unmarked
    )


def test_the_collector_sees_markers_and_languages(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- not-run: needs a FLAME node -->\n```python\nraise SystemExit\n```\n\n"
        '```sh\nflame --help\n```\n\n    ```json\n    {"a": 1}\n    ```\n'
    )
    found = blocks(page)
    assert [(b.language, b.skip_reason) for b in found] == [
        ("python", "needs a FLAME node"),
        ("sh", None),
        ("json", None),
    ]
    assert found[2].code == '{"a": 1}\n'


def runnable(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.skip_reason is None and b.language in RUNNABLE]


WITH_CODE = [page for page in PAGES if runnable(page)]


class SnippetFailed(AssertionError):
    """A code block of the docs failed; the message names its page and line."""


def run_page(page: Path, folder: Path) -> None:
    """Run the page's blocks in order in ``folder`` (the caller makes it the working folder)."""
    namespace: dict[str, object] = {"__name__": "docs_snippet"}
    for block in runnable(page):
        started = time.monotonic()
        try:
            if block.language == "json":
                json.loads(block.code)
            elif block.language in SHELL:
                run_shell(block, folder)
            else:
                with contextlib.redirect_stdout(io.StringIO()):
                    run_python(block, namespace)
        except Exception as exc:
            detail = "".join(traceback.format_exception(exc)[-8:])
            raise SnippetFailed(f"the code block at {block.where} failed:\n{detail}") from None
        if time.monotonic() - started > BLOCK_LIMIT:
            raise SnippetFailed(f"{block.where} took too long for a snippet")


@pytest.mark.parametrize("page", WITH_CODE, ids=[p.relative_to(ROOT).as_posix() for p in WITH_CODE])
def test_page_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("examples", ".venv"):
        if (ROOT / name).exists():
            (tmp_path / name).symlink_to(ROOT / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        run_page(page, tmp_path)
    except SnippetFailed as failure:
        pytest.fail(str(failure), pytrace=False)


@pytest.mark.parametrize(
    ("code", "line"),
    [
        ("```python\nx = 1\n```\n\n```python\nassert x == 2\n```\n", 5),
        ("```sh\nflame --version-that-does-not-exist\n```\n", 1),
        ("```json\n{not json}\n```\n", 1),
    ],
)
def test_a_failing_block_is_named(
    code: str, line: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    page = tmp_path / "page.md"
    page.write_text(code)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SnippetFailed, match=rf"page.md:{line}\b"):
        run_page(page, tmp_path)


def test_top_level_await_runs_in_a_loop(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nimport asyncio\nawait asyncio.sleep(0)\nresult = 3\n```\n")
    namespace: dict[str, object] = {}
    run_python(blocks(page)[0], namespace)
    assert namespace["result"] == 3
