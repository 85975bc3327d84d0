"""Loading an analysis file: run it as ``python FILE`` would, up to its ``flame.run(...)`` call.

The file is run with ``runpy.run_path`` (``__name__`` set to ``"__main__"``, its folder first on
``sys.path``) while :func:`flame.runner.set_run_hook` is set, so the file's ``flame.run(analyzer,
aggregator, ...)`` hands the analysis over instead of running on a node. The rest of the file after that
call is not executed. A file that never calls ``flame.run`` is refused with :class:`AnalysisFileError`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import runpy
import sys
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flame.errors import ConfigurationError, FlameError
from flame.federated import Aggregator, Analysis, Analyzer, FederationOptions
from flame.runner import set_run_hook
from flame.star.core_sdk import reset_node_factory, set_node_factory


class AnalysisFileError(FlameError):
    """The analysis file cannot be run: missing, failing while loading, or never calling ``flame.run``."""


class _StarScript(BaseException):
    """Raised when the file builds PrivateAIM's ``FlameCoreSDK`` (a ``StarModel``): a PrivateAIM-style script."""


class _ScriptAnalyzer(Analyzer):
    """The analyzer side of a PrivateAIM-style script: the script runs it itself, on every node."""

    def analyze(self, data: Any, aggregate: Any, round: int) -> Any:
        raise FlameError("a PrivateAIM-style script runs its own StarModel on every node")


class _ScriptAggregator(Aggregator):
    """The aggregator side of a PrivateAIM-style script (see :class:`_ScriptAnalyzer`)."""

    def aggregate(self, updates: dict[str, Any], round: int, previous: Any) -> Any:
        raise FlameError("a PrivateAIM-style script runs its own StarModel on every node")


class _HandedOver(BaseException):
    """Raised by the run hook to stop the analysis file at ``flame.run`` (not an ``Exception``)."""


# -- loading the analysis file -----------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedAnalysis:
    """What an analysis file handed to ``flame.run`` (``path`` None: an analysis given as objects)."""

    path: Path | None
    analyzer: Analyzer | type[Analyzer]
    aggregator: Aggregator | type[Aggregator]
    options: FederationOptions
    #: All of it as one object (its :meth:`~flame.federated.analysis.Analysis.interpret` reads the result)
    analysis: Analysis
    #: ``"flame"``: ``flame.run(...)`` handed the analysis over; ``"star"``: a PrivateAIM-style script
    #: (``StarModel(...)`` or ``FlameCoreSDK()``), run whole on every node
    kind: Literal["flame", "star"] = "flame"
    #: a :class:`~flame.local.star_runs.StarJob` (PrivateAIM's tester): code per node instead of a file
    job: Any = None

    @classmethod
    def of(
        cls, analysis: Analysis, path: Path | None = None, kind: Literal["flame", "star"] = "flame"
    ) -> LoadedAnalysis:
        """The loaded form of a ready :class:`Analysis`."""
        return cls(path, analysis.analyzer, analysis.aggregator, analysis.options, analysis, kind)

    @classmethod
    def star_script(cls, path: Path) -> LoadedAnalysis:
        """A PrivateAIM-style script: every node runs the whole file, as its container would."""
        return cls.of(Analysis(_ScriptAnalyzer(), _ScriptAggregator(), name=path.name), path, "star")

    @classmethod
    def star_job(cls, job: Any, name: str) -> LoadedAnalysis:
        """PrivateAIM's tester: ``job`` says which code each node runs."""
        loaded = cls.of(Analysis(_ScriptAnalyzer(), _ScriptAggregator(), name=name), None, "star")
        return dataclasses.replace(loaded, job=job)

    def with_options(self, **changes: Any) -> LoadedAnalysis:
        """The same analysis with some federation options changed."""
        if not changes:
            return self
        return dataclasses.replace(self, analysis=self.analysis.with_options(**changes)).synced()

    def synced(self) -> LoadedAnalysis:
        """The fields taken from :attr:`analysis` again."""
        analysis = self.analysis
        return dataclasses.replace(
            self, analyzer=analysis.analyzer, aggregator=analysis.aggregator, options=analysis.options
        )

    @property
    def label(self) -> str:
        """The file's name, or the analysis' name or classes (for titles and reports)."""
        if self.path is not None:
            return self.path.name
        if self.analysis.name:
            return self.analysis.name
        return f"{_class_name(self.analyzer)} + {_class_name(self.aggregator)}"


def _class_name(obj: Any) -> str:
    return obj.__name__ if isinstance(obj, type) else type(obj).__name__


@contextlib.contextmanager
def script_context(path: Path, argv: Sequence[str] = (), *, forget_modules: bool = True) -> Iterator[None]:
    """Run code as ``python PATH ARGV...`` would: the file's folder first on ``sys.path``, ``sys.argv``.

    With ``forget_modules``, the file's sibling modules (and packages) imported meanwhile are removed from
    ``sys.modules`` afterwards, so a later file with a sibling module of the same name (``analyzer.py``)
    gets its own. Modules whose top-level package was imported before (``flame``) are never removed.
    """
    folder = str(path.resolve().parent)
    before = set(sys.modules)
    saved_argv = sys.argv
    sys.argv = [str(path), *argv]
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        sys.argv = saved_argv
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)
        if forget_modules:
            for name in _local_modules(set(sys.modules) - before, before, Path(folder)):
                del sys.modules[name]


def _local_modules(new: set[str], before: set[str], folder: Path) -> list[str]:
    """The modules of ``new`` whose top-level module is new too and sits directly in ``folder``."""
    local = []
    for name in new:
        top = name.partition(".")[0]
        module = sys.modules.get(top)
        module_file = getattr(module, "__file__", None)
        if top in before or not module_file:
            continue
        location = Path(module_file).resolve()
        home = location.parent.parent if location.name == "__init__.py" else location.parent
        if home == folder:
            local.append(name)
    return local


def load_analysis(path: Path | str) -> LoadedAnalysis:
    """Run an analysis file up to its ``flame.run(...)`` call and return what it handed over.

    A PrivateAIM-style script (``StarModel(...)`` at module level or in its ``__main__`` block, or
    ``FlameCoreSDK()``) is stopped where it builds ``FlameCoreSDK`` and loaded as such
    (``kind == "star"``): a local run executes the whole file on every node. Raises :class:`AnalysisFileError` when the file does not exist, raises while loading, never calls
    ``flame.run``, or calls it with something other than an Analyzer and an Aggregator.
    """
    file = Path(path)
    if not file.is_file():
        raise AnalysisFileError(f"{file}: no such file; give the path of an analysis .py file")
    captured: list[Analysis] = []

    def hook(analysis: Analysis) -> Any:
        captured.append(analysis)
        raise _HandedOver

    def star_factory(aggregator_requires_data: bool, status_sync: tuple[str, ...]) -> Any:
        raise _StarScript

    token = set_run_hook(hook)
    star_token = set_node_factory(star_factory)
    try:
        with script_context(file):
            runpy.run_path(str(file), run_name="__main__")
    except _HandedOver:
        pass
    except _StarScript:
        return LoadedAnalysis.star_script(file)
    except SystemExit as exc:
        raise AnalysisFileError(
            f"{file} exited (sys.exit({exc.code!r})) before calling flame.run(...)"
        ) from None
    except ConfigurationError as exc:
        if exc.variable not in ("analyzer", "aggregator"):
            raise AnalysisFileError(
                f"{file} raised {type(exc).__name__} while loading: {exc}{_file_frames(exc, file)}"
            ) from exc
        which = "first" if exc.variable == "analyzer" else "second"
        raise AnalysisFileError(f"{file}: flame.run's {which} argument {exc.problem}") from None
    except Exception as exc:
        raise AnalysisFileError(
            f"{file} raised {type(exc).__name__} while loading: {exc}{_file_frames(exc, file)}"
        ) from exc
    finally:
        reset_node_factory(star_token)
        token.var.reset(token)
    if not captured:
        raise AnalysisFileError(
            f"{file} never called flame.run(...) (nor built PrivateAIM's StarModel). End the file with\n\n"
            '    if __name__ == "__main__":\n'
            "        flame.run(MyAnalyzer(), MyAggregator())\n"
        )
    return LoadedAnalysis.of(captured[0], file)


def _file_frames(exc: BaseException, file: Path) -> str:
    """The traceback lines that point into ``file`` (where the author looks first)."""
    target = str(file.resolve())
    lines = [
        f"\n  {frame.filename}, line {frame.lineno}: {frame.line}"
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename and str(Path(frame.filename).resolve()) == target
    ]
    return "".join(lines[-3:])


__all__ = ["AnalysisFileError", "LoadedAnalysis", "load_analysis", "script_context"]
