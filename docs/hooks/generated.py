"""MkDocs hook: the reference pages that are generated from the code at build time, so they cannot drift.

- ``<!-- generated: cli -->`` becomes the help of every ``flame`` command, from the argparse parser that
  :mod:`flame.cli` builds (the parser itself, not a copy of it).
- ``<!-- generated: configuration -->`` becomes the table of the local-run variables in the docstring of
  :mod:`flame.config`.
- Sphinx roles in rendered docstrings (``:class:`FlameError```) are shown as code.

The functions are plain so that tests can call them without MkDocs.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

CLI_MARKER = "<!-- generated: cli -->"
CONFIG_MARKER = "<!-- generated: configuration -->"


def cli_markdown() -> str:
    """Markdown with one section per ``flame`` command: its help as the parser prints it."""
    from flame.cli import _parser

    parts: list[str] = []
    for path, parser in _walk(_parser(), ["flame"]):
        title = " ".join(path)
        anchor = "-".join(path)
        parts.append(f"## `{title}` {{#{anchor}}}\n")
        parts.append("```text\n" + _help(parser) + "\n```\n")
    return "\n".join(parts)


def configuration_markdown() -> str:
    """The variables table of :mod:`flame.config`'s docstring as a Markdown table."""
    import flame.config

    rows = []
    for line in (flame.config.__doc__ or "").splitlines():
        match = re.match(r"^``(FLAME_[A-Z_]+)``\s+(.*)$", line)
        if match:
            rows.append((match.group(1), _rst_to_md(match.group(2))))
    if not rows:
        raise RuntimeError("no FLAME_ variables found in flame.config's docstring: the table moved")
    lines = ["| variable | meaning |", "|---|---|"]
    lines += [f"| `{name}` | {meaning} |" for name, meaning in rows]
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: fill in the generated parts of a page."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_markdown())
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER, configuration_markdown())
    return markdown


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: docstrings use Sphinx roles (``:class:`X```); show them as plain code."""
    return ROLE.sub("<code>", html)


ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj):<code>~?")


def _walk(
    parser: argparse.ArgumentParser, path: list[str]
) -> list[tuple[list[str], argparse.ArgumentParser]]:
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _walk(child, [*path, name])
    return found


def _help(parser: argparse.ArgumentParser) -> str:
    # a fixed width, so the page does not depend on the terminal that built it
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"
    try:
        return parser.format_help().rstrip()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def _rst_to_md(text: str) -> str:
    text = re.sub(r":(?:mod|class|func|data):`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`").replace("|", "\\|")
