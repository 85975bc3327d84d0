"""``flame new NAME``: a new analysis project from the templates in ``flame/templates``.

The project (``NAME/``) holds:

================== =================================== ==============================================
file               made from                           what it is
================== =================================== ==============================================
``analysis.py``    ``main_generic.py``                 the entry point calling ``flame.run``
``analyzer.py``    ``analyzer_generic.py``             the analyzer (federated mean of a CSV column)
``aggregator.py``  ``aggregator_generic.py``           the aggregator
``test_analysis.py`` ``test_analysis.py``              pytest: federated result == pooled result
``make_data.py``   ``make_data_generic.py``            writes the sample data (run at creation)
``data/node-i/``   ``make_data.py``                    three nodes, ``s3/data.csv`` each
``Dockerfile``     ``Dockerfile``                      the FLAME analysis image
``README.md``      ``README.md``                       how to test, simulate and build it
================== =================================== ==============================================

The analyzer and the aggregator stay in modules of their own, imported by ``analysis.py``: Python puts a
script's folder first on ``sys.path`` (and so do ``flame sim`` and ``flame run``), and the image copies
the three files. The templates are valid Python where they are, importing each other by their template
names; creating a project renames the modules (``analyzer_generic`` becomes ``analyzer``, ...) and drops
the ``# type: ignore`` those imports need in place. ``{{name}}``, ``{{image}}`` (the name in lower case,
as image tags need) and ``{{flame_version}}`` are filled in the Dockerfile and the README.
"""

from __future__ import annotations

import re
import runpy
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from flame import __version__
from flame.errors import FlameError

#: template file -> project file
FILES = {
    "main_generic.py": "analysis.py",
    "analyzer_generic.py": "analyzer.py",
    "aggregator_generic.py": "aggregator.py",
    "test_analysis.py": "test_analysis.py",
    "make_data_generic.py": "make_data.py",
    "Dockerfile": "Dockerfile",
    "README.md": "README.md",
    "requirements-test.txt": "requirements-test.txt",
    "dockerignore": ".dockerignore",
    "gitignore": ".gitignore",
}
#: template module -> project module
MODULES = {
    Path(template).stem: Path(target).stem for template, target in FILES.items() if template.endswith(".py")
}

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_MODULE = re.compile(r"\b(" + "|".join(map(re.escape, MODULES)) + r")\b")
_IMPORT_IGNORE = re.compile(r"^((?:from|import) .*?)\s+# type: ignore\[import-not-found\]$", re.MULTILINE)


class ProjectError(FlameError):
    """A project cannot be created (a bad name, or a folder that is not empty)."""


def render(template: str, text: str, name: str) -> str:
    """The project's version of one template file's text."""
    if template.endswith(".py"):
        text = _IMPORT_IGNORE.sub(r"\1", text)
        return _MODULE.sub(lambda match: MODULES[match.group(1)], text)
    values = {"name": name, "image": name.lower(), "flame_version": __version__}
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def create_project(name: str, parent: Path | str = ".", *, seed: int = 0) -> Path:
    """Create the project ``parent/name`` with its sample data; returns its folder.

    Refuses (:class:`ProjectError`) a name that is not a plain folder name, and a target that exists
    and is not an empty folder. Nothing is left behind when creating fails.
    """
    if not _NAME.match(name) or name in (".", ".."):
        raise ProjectError(
            f"{name!r} is not a project name: use letters, digits, '.', '-' and '_', starting with a "
            "letter or digit"
        )
    target = Path(parent) / name
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        what = "folder is not empty" if target.is_dir() else "path exists and is not a folder"
        raise ProjectError(f"{target}: the {what}; choose another name or --dir")
    existed = target.exists()
    templates = resources.files("flame").joinpath("templates")
    try:
        target.mkdir(parents=True, exist_ok=True)
        for template, filename in FILES.items():
            text = templates.joinpath(template).read_text(encoding="utf-8")
            (target / filename).write_text(render(template, text, name), encoding="utf-8")
        _make_data(target, seed)
    except BaseException:
        if existed:
            for child in target.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        else:
            shutil.rmtree(target, ignore_errors=True)
        raise
    return target


def _make_data(project: Path, seed: int) -> None:
    """Run the project's own ``make_data.py`` to write ``data/``, as its README says to regenerate it."""
    namespace = runpy.run_path(str(project / FILES["make_data_generic.py"]), run_name="flame_new_make_data")
    namespace["write_sample_data"](project / "data", 3, seed)


def new_command(args: Any) -> int:
    """``flame new NAME [--dir PARENT] [--seed S]``."""
    try:
        project = create_project(args.name, args.dir, seed=args.seed)
    except ProjectError as exc:
        print(f"flame new: {exc}", file=sys.stderr)
        return 1
    print(f"created {project}")
    print("next:")
    print(f"  cd {project}")
    print("  python -m pytest                    # federated mean == pooled mean")
    print("  flame sim analysis.py --data data   # the federation on this machine")
    print(f"  docker build -t {args.name.lower()} .   # the FLAME analysis image")
    return 0


__all__ = ["FILES", "ProjectError", "create_project", "new_command", "render"]
