"""Where an analysis failed: the author's file and line in the failure reason a node reports."""

from __future__ import annotations

import os
import sysconfig
import traceback
from pathlib import Path

import flame

#: folders whose frames are library code, not the author's: this package, the standard library, site-packages
_LIBRARY_DIRS = tuple(
    {
        str(Path(flame.__file__).resolve().parent) + os.sep,
        *(
            str(Path(p).resolve()) + os.sep
            for key in ("stdlib", "platstdlib", "purelib", "platlib")
            if (p := sysconfig.get_paths().get(key))
        ),
    }
)


def author_location(exc: BaseException) -> str | None:
    """Where in the author's code ``exc`` arose: ``"analysis.py:12, in aggregate"``, or None.

    The innermost frame of the traceback outside this package, the standard library and installed
    packages: the author's line even when the error itself was raised inside pandas or NumPy.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        path = str(Path(frame.filename).resolve()) if not frame.filename.startswith("<") else frame.filename
        if frame.filename.startswith("<frozen") or path.startswith(_LIBRARY_DIRS):
            continue
        return f"{_short(path)}:{frame.lineno}, in {frame.name}"
    return None


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
