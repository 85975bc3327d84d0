"""flame.hooks: each process-wide hook installs once, removes cleanly, and stays inert when wrapped."""

from __future__ import annotations

import contextvars
import logging
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from flame import hooks


@pytest.fixture
def clean_crash_hook() -> Iterator[None]:
    hooks.unwatch_crashes()
    before = sys.excepthook
    yield
    hooks.unwatch_crashes()
    sys.excepthook = before


def test_the_record_factory_installs_once_and_is_restored(clean_crash_hook: None) -> None:
    was_installed = hooks.remove_record_factory()  # the redaction of an earlier test may have it
    try:
        base = logging.getLogRecordFactory()
        seen: list[str] = []

        def make(previous: hooks.RecordFactory) -> hooks.RecordFactory:
            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                seen.append(record.getMessage())
                return record

            return factory

        assert hooks.install_record_factory(make) is True
        assert hooks.install_record_factory(make) is False  # idempotent: not wrapped twice
        logging.getLogger("flame.test.hooks").warning("one")
        assert seen == ["one"]
        assert hooks.remove_record_factory() is True
        assert logging.getLogRecordFactory() is base
        assert hooks.remove_record_factory() is False
    finally:
        if was_installed:
            from flame.redact import install_redaction

            install_redaction()


def test_a_removed_hook_that_someone_wrapped_stays_in_the_chain_inert() -> None:
    was_installed = hooks.remove_record_factory()
    calls: list[str] = []

    def make(previous: hooks.RecordFactory) -> hooks.RecordFactory:
        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            calls.append("ours")
            return previous(*args, **kwargs)

        return factory

    base = logging.getLogRecordFactory()
    hooks.install_record_factory(make)
    ours = logging.getLogRecordFactory()

    def theirs(*args: Any, **kwargs: Any) -> logging.LogRecord:
        calls.append("theirs")
        return ours(*args, **kwargs)

    logging.setLogRecordFactory(theirs)
    try:
        hooks.remove_record_factory()
        assert logging.getLogRecordFactory() is theirs  # not torn out from under the other library
        logging.getLogger("flame.test.hooks").warning("two")
        assert calls == ["theirs"]  # ours only passes the record on
    finally:
        logging.setLogRecordFactory(base)
        if was_installed:
            from flame.redact import install_redaction

            install_redaction()


def test_redaction_installs_its_factory_through_the_hooks() -> None:
    from flame.redact import install_redaction, uninstall_redaction

    install_redaction()
    factory = logging.getLogRecordFactory()
    install_redaction()
    assert logging.getLogRecordFactory() is factory
    uninstall_redaction()
    assert logging.getLogRecordFactory() is not factory
    install_redaction()


def test_crashes_are_seen_through_the_previous_excepthook(clean_crash_hook: None) -> None:
    printed: list[type[BaseException]] = []
    sys.excepthook = lambda kind, value, tb: printed.append(kind)
    event = hooks.watch_crashes()
    assert hooks.watch_crashes() is event
    assert not hooks.crashed()
    sys.excepthook(ValueError, ValueError("x"), None)
    assert hooks.crashed() and printed == [ValueError]
    assert hooks.unwatch_crashes() is True
    assert not hooks.crashed()
    sys.excepthook(KeyError, KeyError("y"), None)
    assert not hooks.crashed() and printed == [ValueError, KeyError]


def test_at_exit_runs_each_callback_once_and_can_be_cancelled() -> None:
    script = textwrap.dedent(
        """
        from flame import hooks

        def bye():
            print("bye")

        def never():
            print("never")

        assert hooks.at_exit(bye) is True
        assert hooks.at_exit(bye) is False
        hooks.at_exit(never)
        assert hooks.cancel_at_exit(never) is True
        assert hooks.cancel_at_exit(never) is False
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["bye"]


def test_context_hooks_are_per_context_and_registered() -> None:
    hook: hooks.ContextHook[str] = hooks.ContextHook("flame_test_hook", "a hook for this test")
    try:
        with pytest.raises(ValueError, match="exists already"):
            hooks.ContextHook("flame_test_hook", "twice")
        assert hook.get() is None
        seen: list[str | None] = []
        with hook.using("node-1"):
            assert hook.get() == "node-1"
            context = contextvars.copy_context()
            thread = threading.Thread(target=lambda: seen.append(context.run(hook.get)))
            thread.start()
            thread.join(5.0)
        assert hook.get() is None and seen == ["node-1"]
        import flame.star.core_sdk  # noqa: F401  (FlameCoreSDK's node factory is one)

        assert "flame_star_node_factory" in hooks.ContextHook.registry
    finally:
        del hooks.ContextHook.registry["flame_test_hook"]
