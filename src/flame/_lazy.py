"""Modules imported on first use: what a module needs only on some paths does not slow ``import flame``."""

from __future__ import annotations

import importlib
from typing import Any


class _OnFirstUse:
    __slots__ = ("_module", "_name", "_namespace")

    def __init__(self, module: str, namespace: dict[str, Any], name: str) -> None:
        self._module = module
        self._namespace = namespace
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        module = importlib.import_module(self._module)
        self._namespace[self._name] = module  # from now on the global is the module itself
        return getattr(module, attribute)

    def __repr__(self) -> str:
        return f"<{self._module}, imported on first use>"


def on_first_use(module: str, namespace: dict[str, Any], name: str) -> Any:
    """A stand-in for ``import module as name`` at the top of the module whose ``globals()`` is ``namespace``.

    Its first attribute access imports ``module`` and puts it in place of the stand-in, so every later
    ``name.attr`` in that module costs what it would have. Keep a real import under ``TYPE_CHECKING``
    for the type checker.
    """
    return _OnFirstUse(module, namespace, name)
