"""The documentation site: generated reference pages, navigation, and no references outside the repository."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from flame.cli import _parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hook", DOCS / "hooks" / "generated.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def commands(parser: argparse.ArgumentParser, path: str = "flame") -> list[str]:
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += commands(child, f"{path} {name}")
    return found


def test_cli_page_has_every_command_and_option(hook: ModuleType) -> None:
    text = hook.cli_markdown()
    parser = _parser()
    for command in commands(parser):
        assert f"## `{command}`" in text
    sim = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["sim"]
    for action in sim._actions:
        for option in action.option_strings:
            assert option in text, option
    assert "exit codes:" in text and "restart=node-2@5" in text


def test_generated_markers_are_replaced(hook: ModuleType) -> None:
    cli = (DOCS / "reference" / "cli.md").read_text()
    config = (DOCS / "reference" / "configuration.md").read_text()
    assert hook.CLI_MARKER in cli and hook.CONFIG_MARKER in config
    out = hook.on_page_markdown(cli + config, None, None, None)
    assert "<!-- generated:" not in out


def test_every_flame_variable_in_the_source_is_documented(hook: ModuleType) -> None:
    page = hook.on_page_markdown((DOCS / "reference" / "configuration.md").read_text(), None, None, None)
    used = {
        name
        for path in (ROOT / "src").rglob("*.py")
        if "sim" not in path.relative_to(ROOT / "src").parts
        for name in re.findall(r"\bFLAME_[A-Z][A-Z_]*[A-Z]\b", path.read_text(encoding="utf-8"))
    }
    assert used, "no FLAME_ variables found: the scan is broken"
    missing = sorted(name for name in used if f"`{name}`" not in page)
    assert not missing, f"document these variables in docs/reference/configuration.md: {missing}"


def test_configuration_table_comes_from_flame_config(hook: ModuleType) -> None:
    table = hook.configuration_markdown()
    assert table.startswith("| variable | meaning |")
    assert "| `FLAME_BASE_URL` |" in table and ":mod:" not in table


def test_sphinx_roles_are_shown_as_code(hook: ModuleType) -> None:
    html = "raises :class:<code>~flame.errors.FlameError</code> and :func:<code>run</code>"
    assert hook.on_page_content(html, None, None, None) == (
        "raises <code>flame.errors.FlameError</code> and <code>run</code>"
    )


def test_every_page_is_in_the_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    missing = sorted(page for page in pages if page not in config)
    assert not missing, f"add to nav in mkdocs.yml: {missing}"


OUTSIDE = re.compile(r"WIRE\.md|DESIGN\.md|COMPAT\.md|TESTING\.md|\.\./shared")


def test_nothing_refers_to_documents_outside_the_repository() -> None:
    files = [ROOT / "README.md", *DOCS.rglob("*.md"), *(ROOT / "src").rglob("*.py")]
    hits = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, hits


def test_repository_paths_named_in_the_docs_exist() -> None:
    named = set()
    for path in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        named |= set(re.findall(r"`((?:examples|benchmarks|tests|src)/[\w./-]+?)`", path.read_text()))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, missing


def test_readme_links_resolve() -> None:
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert any(t.startswith("docs/") for t in local), "the README links the documentation pages"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing


def resolve(dotted: str) -> object:
    """The object a dotted name such as ``flame.local.api.simulate`` names: its longest importable
    module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attribute in parts[cut:]:
            found = getattr(found, attribute)
        return found
    raise ImportError(dotted)


def test_python_names_in_the_docs_exist() -> None:
    """A module, class or function of the SDK named in code font (`flame.x.y`) must still exist."""
    named: dict[str, str] = {}
    for path in [ROOT / "README.md", *DOCS.rglob("*.md")]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name in re.findall(r"`(flame(?:\.[A-Za-z_]\w*)+)", line):
                named.setdefault(name, f"{path.relative_to(ROOT)}:{number}")
    assert {"flame.simulate", "flame.stats", "flame.codec"} <= set(named), "the scan is broken"
    missing = []
    for name, where in sorted(named.items()):
        try:
            resolve(name)
        except (ImportError, AttributeError):
            missing.append(f"{name} ({where})")
    assert not missing, f"these names no longer exist; update the pages: {missing}"


def test_a_removed_name_is_found() -> None:
    for removed in ("flame.sim.cli_sim.simulate", "flame.local.api.run_simulation", "flame.no_such_module"):
        with pytest.raises((ImportError, AttributeError)):
            resolve(removed)
    assert resolve("flame.local.api.simulate") is resolve("flame.simulate")
