"""Where an analysis failed: the author's file and line in the failure reason a node reports."""

from __future__ import annotations

import os
import sysconfig
import traceback
from pathlib import Path

import flame

_PATHS = sysconfig.get_paths()
_SDK = str(Path(flame.__file__).resolve().parent) + os.sep
#: the standard library (in a venv its folder holds site-packages too: see :func:`_library`)
_STDLIB = tuple(
    {str(Path(p).resolve()) + os.sep for key in ("stdlib", "platstdlib") if (p := _PATHS.get(key))}
)
#: installed packages (pandas, NumPy, ...): the author's only if nothing else in the traceback is
_INSTALLED = tuple(
    {str(Path(p).resolve()) + os.sep for key in ("purelib", "platlib") if (p := _PATHS.get(key))}
)


def _library(path: str) -> bool:
    """Whether ``path`` is this SDK's or the standard library's, never the author's code."""
    return path.startswith(_SDK) or (path.startswith(_STDLIB) and not path.startswith(_INSTALLED))


def author_location(exc: BaseException) -> str | None:
    """Where in the author's code ``exc`` arose: ``"analysis.py:12, in aggregate"``, or None.

    The innermost frame of the traceback outside this package, the standard library and installed
    packages: the author's line even when the error itself was raised inside pandas or NumPy. An
    analysis installed as a package itself is found among the installed packages' frames instead.
    """
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<") and not _library(_resolved(frame.filename))
    ]
    outside = [frame for frame in frames if not _resolved(frame.filename).startswith(_INSTALLED)]
    for candidates in (outside, frames):
        if candidates:
            frame = candidates[-1]
            return f"{_short(_resolved(frame.filename))}:{frame.lineno}, in {frame.name}"
    return None


def _resolved(filename: str) -> str:
    return str(Path(filename).resolve())


def describe_failure(exc: BaseException) -> str:
    """``"ValueError: boom (at analysis.py:12, in aggregate)"``: the error and the author's line."""
    where = author_location(exc)
    text = f"{type(exc).__name__}: {exc}"
    return f"{text} (at {where})" if where else text


def _short(path: str) -> str:
    """``path`` relative to the working folder when inside it, else as it is."""
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else path
    except ValueError:  # another drive (Windows)
        return path


__all__ = ["author_location", "describe_failure"]
