"""flame: the SDK for federated analyses on FLAME nodes.

Write an :class:`Analyzer` (runs next to the data on every analysis node) and an :class:`Aggregator`
(combines what the nodes send), and call :func:`run`::

    import flame

    class Mean(flame.Analyzer):
        def analyze(self, data, aggregate, round):
            ages = data.dataframe("patients.csv")["age"]
            return {"n": len(ages), "sum": float(ages.sum())}

    class Pool(flame.Aggregator):
        def aggregate(self, updates, round, previous):
            n = sum(u["n"] for u in updates.values())
            return {"n": n, "mean": sum(u["sum"] for u in updates.values()) / n}

    if __name__ == "__main__":
        flame.run(Mean(), Pool())

The same file runs on FLAME nodes (``python analysis.py``) and locally (``flame sim analysis.py``); from
Python, a test or a notebook, ``flame.simulate(Mean(), Pool(), data="data")`` runs it on a local
federation and returns its result, per-round figures and run report.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from typing import TYPE_CHECKING, Any


class _DeferredHttpxCli:
    """Lets ``import httpx`` skip its command-line client until someone uses it.

    httpx's package imports ``httpx._main`` (click, pygments, rich's syntax and progress: about 40 ms)
    only to export ``httpx.main``, which the SDK never calls. This one-shot import hook (installed
    before httpx is imported) gives that import a stand-in module whose attributes (``main`` too) load
    the real one on first use, so the ``httpx`` command and ``httpx._main`` still work in a process that
    imported flame first.
    """

    NAME = "httpx._main"

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.NAME:
            return None
        sys.meta_path.remove(self)  # once: the real module is found the usual way later
        return importlib.machinery.ModuleSpec(name, self)  # type: ignore[arg-type]

    def create_module(self, spec: Any) -> types.ModuleType:
        stand_in = types.ModuleType(self.NAME, "httpx's command line, loaded on first use")

        def real() -> types.ModuleType:
            if sys.modules.get(self.NAME) is stand_in:
                del sys.modules[self.NAME]
            return importlib.import_module(self.NAME)

        def main(*args: Any, **kwargs: Any) -> Any:
            return real().main(*args, **kwargs)

        def attribute(name: str) -> Any:
            if name.startswith("__"):  # the import system's probes (__path__ ...) load nothing
                raise AttributeError(name)
            return getattr(real(), name)

        stand_in.main = main  # type: ignore[attr-defined]
        stand_in.__getattr__ = attribute  # type: ignore[method-assign]
        return stand_in

    def exec_module(self, module: types.ModuleType) -> None:
        return None

    @classmethod
    def install(cls) -> None:
        if "httpx" not in sys.modules and not any(isinstance(f, cls) for f in sys.meta_path):
            sys.meta_path.insert(0, cls())


_DeferredHttpxCli.install()

from flame.errors import FlameError  # noqa: E402

if TYPE_CHECKING:
    from flame.federated import Aggregator, Analysis, AnalysisClient, Analyzer, Data, FederationOptions
    from flame.local import SimulationResult, simulate, simulate_async
    from flame.runner import run

__version__ = "0.1.0"

# Imported on first use, so that ``import flame.codec`` or ``flame.protocols`` stays light.
_LAZY = {
    "Analysis": "flame.federated",
    "AnalysisClient": "flame.federated",
    "Aggregator": "flame.federated",
    "Analyzer": "flame.federated",
    "Data": "flame.federated",
    "FederationOptions": "flame.federated",
    "run": "flame.runner",
    "simulate": "flame.local",
    "simulate_async": "flame.local",
    "SimulationResult": "flame.local",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flame' has no attribute {name!r}")


__all__ = [
    "Aggregator",
    "Analysis",
    "AnalysisClient",
    "Analyzer",
    "Data",
    "FederationOptions",
    "FlameError",
    "SimulationResult",
    "__version__",
    "run",
    "simulate",
    "simulate_async",
]
