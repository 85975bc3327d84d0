"""Keep tokens and secrets out of log output.

Three kinds of text are replaced by ``[REDACTED]``:

- JWT-shaped strings: base64url segments joined by dots whose first segment starts with ``eyJ`` (the
  Base64 of ``{"``), and lone header or payload segments of that shape;
- whatever follows ``Bearer `` (an ``Authorization`` header value);
- exact secrets registered with :func:`register_secret` (for example the ``DATA_SOURCE_TOKEN`` key).

:func:`redact` applies this to a string. :class:`RedactTokensFilter` applies it to log records: it formats
the message with its arguments first, so a token passed as an argument is caught too, and it redacts the
formatted exception and stack text. :func:`install_redaction` makes every record of the ``flame`` logger
hierarchy pass through the filter, whichever handler (on ``flame``, on root, added later) emits it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

from flame import hooks

REDACTED = "[REDACTED]"
"""What a token or secret is replaced by."""

MIN_SECRET_LENGTH = 8
"""Shorter strings cannot be registered as secrets: replacing them would garble ordinary text."""

_B64URL = r"[A-Za-z0-9_=-]"
# A JWT (header.payload.signature), or a part of one: a header or payload segment always starts with eyJ.
_JWT_RE = re.compile(rf"eyJ{_B64URL}{{8,}}(?:\.{_B64URL}+){{0,2}}")
# RFC 6750 b64token after "Bearer ".
_BEARER_RE = re.compile(r"(\bBearer\s+)[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)


# Secrets without whitespace are found within runs of non-whitespace text; the others (rare) by a regex.
_RUN_RE = re.compile(rf"\S{{{MIN_SECRET_LENGTH},}}")
_SPACE_RE = re.compile(r"\s")


class _SecretSet:
    """A thread-safe set of exact strings, found in a text in time linear in the text's length.

    Secrets without whitespace are kept in a set, with the lengths they come in per first
    :data:`MIN_SECRET_LENGTH` characters; a text is scanned run by run (maximal stretches of
    non-whitespace, where such a secret must lie) with one dict lookup per position, and set lookups
    where a prefix matches. Registering one costs the same however many are registered already
    (one combined regex, recompiled per secret, made start-up of many nodes quadratic). Secrets with
    whitespace go into a regex of their own. At each position the longest matching secret is replaced,
    left to right, as a regex alternation of all of them ordered longest first would.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: set[str] = set()
        #: first MIN_SECRET_LENGTH characters -> the lengths of the secrets starting so, longest first
        #: (tuples replaced whole, so a reader on another thread sees a consistent entry)
        self._lengths: dict[str, tuple[int, ...]] = {}
        #: how many secrets have each (prefix, length): a length leaves its prefix with the last one
        self._counts: dict[tuple[str, int], int] = {}
        self._spaced: frozenset[str] = frozenset()
        self._spaced_pattern: re.Pattern[str] | None = None

    def add(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("a secret to redact must be a str")
        if len(value) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"a secret to redact must be at least {MIN_SECRET_LENGTH} characters long; "
                "shorter ones would garble ordinary log text"
            )
        with self._lock:
            if value in self._secrets:
                return
            self._secrets.add(value)  # before its prefix: a reader never finds a prefix without it
            if _SPACE_RE.search(value):
                self._set_spaced(self._spaced | {value})
                return
            prefix = value[:MIN_SECRET_LENGTH]
            key = (prefix, len(value))
            self._counts[key] = self._counts.get(key, 0) + 1
            lengths = self._lengths.get(prefix, ())
            if len(value) not in lengths:
                self._lengths[prefix] = tuple(sorted((*lengths, len(value)), reverse=True))

    def discard(self, value: str) -> None:
        with self._lock:
            if value not in self._secrets:
                return
            if value in self._spaced:
                self._set_spaced(self._spaced - {value})
            else:
                prefix = value[:MIN_SECRET_LENGTH]
                key = (prefix, len(value))
                lengths = self._lengths.get(prefix, ())
                if self._counts[key] > 1:
                    self._counts[key] -= 1
                else:
                    del self._counts[key]
                    lengths = tuple(n for n in lengths if n != len(value))
                if lengths:
                    self._lengths[prefix] = lengths
                else:
                    self._lengths.pop(prefix, None)
            self._secrets.discard(value)

    def _set_spaced(self, spaced: frozenset[str]) -> None:
        ordered = sorted(spaced, key=len, reverse=True)
        self._spaced_pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None
        self._spaced = spaced

    def sub(self, text: str) -> str:
        pattern = self._spaced_pattern  # one atomic read: a consistent snapshot
        if pattern is not None:
            text = pattern.sub(REDACTED, text)
        if not self._lengths:
            return text
        return _RUN_RE.sub(self._sub_run, text)

    def _sub_run(self, match: re.Match[str]) -> str:
        run = match.group()
        by_prefix = self._lengths
        secrets = self._secrets
        width = MIN_SECRET_LENGTH
        if len(run) == width:  # the common case of short words: one lookup
            return REDACTED if run in secrets and run in by_prefix else run
        parts: list[str] = []
        kept = 0  # run[kept:i] is copied unchanged
        i = 0
        last = len(run) - width
        while i <= last:
            lengths = by_prefix.get(run[i : i + width])
            if lengths is not None:
                found = next((n for n in lengths if run[i : i + n] in secrets), 0)
                if found:
                    parts.append(run[kept:i])
                    parts.append(REDACTED)
                    i += found
                    kept = i
                    continue
            i += 1
        if not parts:
            return run
        parts.append(run[kept:])
        return "".join(parts)

    def __len__(self) -> int:
        return len(self._secrets)


_GLOBAL_SECRETS = _SecretSet()


def register_secret(value: str) -> None:
    """Redact this exact string everywhere from now on (in :func:`redact` and every filter).

    Raises :class:`ValueError` for strings shorter than :data:`MIN_SECRET_LENGTH` characters.
    """
    _GLOBAL_SECRETS.add(value)


def unregister_secret(value: str) -> None:
    """Stop redacting a string registered with :func:`register_secret` (no error if it was not)."""
    _GLOBAL_SECRETS.discard(value)


def _redact_shapes(text: str) -> str:
    text = _JWT_RE.sub(REDACTED, text)
    return _BEARER_RE.sub(lambda m: m.group(1) + REDACTED, text)


def redact(text: str) -> str:
    """Return ``text`` with JWTs (and parts of them), Bearer values and registered secrets replaced."""
    return _redact_shapes(_GLOBAL_SECRETS.sub(text))


class RedactTokensFilter(logging.Filter):
    """A logging filter that redacts tokens and secrets from a record; it never drops a record.

    The message is formatted with its arguments first; ``record.msg`` becomes the redacted text and
    ``record.args`` becomes ``None``. An exception or stack attached to the record is formatted into
    ``record.exc_text`` / ``record.stack_info`` and redacted there (formatters use ``exc_text`` when it
    is set). Secrets registered with this filter's :meth:`register_secret` apply to it alone; those
    registered with the module's :func:`register_secret` apply to every filter.
    """

    def __init__(self, name: str = "", *, secrets: Iterable[str] = ()) -> None:
        super().__init__(name)
        self._secrets = _SecretSet()
        for secret in secrets:
            self._secrets.add(secret)
        self._formatter = logging.Formatter()

    def register_secret(self, value: str) -> None:
        """Redact this exact string in the records this filter sees (at least 8 characters)."""
        self._secrets.add(value)

    def redact(self, text: str) -> str:
        """Redact ``text`` with this filter's secrets and the global rules."""
        return redact(self._secrets.sub(text))

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact ``record`` in place; always returns ``True``."""
        try:
            message = record.getMessage()
        except Exception:
            # Leave no unformatted token-bearing arguments behind; say that formatting failed.
            message = f"{record.msg} [log arguments could not be formatted and were dropped]"
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            try:
                record.exc_text = self._formatter.formatException(record.exc_info)
            except Exception:
                record.exc_text = "[exception could not be formatted]"
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True

    def __repr__(self) -> str:
        return f"RedactTokensFilter(name={self.name!r}, secrets={len(self._secrets)})"


# --- installation ------------------------------------------------------------------------------------

_install_lock = threading.Lock()
_default_filter: RedactTokensFilter | None = None
_hierarchies: frozenset[str] = frozenset()  # replaced whole, never mutated: safe to read unlocked


def _in_hierarchies(name: str) -> bool:
    roots = _hierarchies  # a frozenset snapshot
    return any(root in ("", "root") or name == root or name.startswith(root + ".") for root in roots)


def _make_factory(previous: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        active = _default_filter
        if active is not None and _in_hierarchies(record.name):
            active.filter(record)
        return record

    return factory


def install_redaction(logger_name: str = "flame") -> RedactTokensFilter:
    """Redact every log record of the ``logger_name`` hierarchy; idempotent. Returns the shared filter.

    The filter is added to the ``logger_name`` logger itself, and a log-record factory (wrapping the one
    in place) runs it on every record created by that logger or one of its children (``flame.node.x``),
    so a record is redacted before any handler sees it, even a handler on root or one added later.
    Calling it again with another name extends redaction to that hierarchy too.
    """
    global _default_filter, _hierarchies
    with _install_lock:
        if _default_filter is None:
            _default_filter = RedactTokensFilter()
        flt = _default_filter
        _hierarchies = _hierarchies | {logger_name}
        logger = logging.getLogger(logger_name)
        if flt not in logger.filters:
            logger.addFilter(flt)
        hooks.install_record_factory(_make_factory)  # idempotent
        return flt


def install_redaction_on_handler(handler: logging.Handler) -> RedactTokensFilter:
    """Add the shared redaction filter to ``handler`` (idempotent), for records of any logger.

    Use it for a handler that must never print a token whatever logger the record comes from.
    """
    global _default_filter
    with _install_lock:
        if _default_filter is None:
            _default_filter = RedactTokensFilter()
        flt = _default_filter
        if flt not in handler.filters:
            handler.addFilter(flt)
        return flt


def uninstall_redaction() -> None:
    """Undo :func:`install_redaction` (mainly for tests); handler filters are left in place."""
    global _hierarchies
    with _install_lock:
        flt = _default_filter
        for name in _hierarchies:
            if flt is not None:
                logging.getLogger(name).removeFilter(flt)
        _hierarchies = frozenset()
        # if another factory wraps ours, ours stays in the chain but does nothing (flame.hooks)
        hooks.remove_record_factory()


__all__ = [
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "RedactTokensFilter",
    "install_redaction",
    "install_redaction_on_handler",
    "redact",
    "register_secret",
    "unregister_secret",
]
