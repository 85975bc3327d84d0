"""Fault injection for the emulated node stack, deterministic under a seed.

A :class:`FaultPlan` is a list of rules set for one run:

- :class:`DeliveryFault` — drop, duplicate, delay or reorder webhook deliveries, globally or for one
  sender/receiver pair, with a probability, in a time window;
- :class:`ServiceOutage` — the broker or storage service of a node (or of every node) answers a 5xx
  for a time window;
- :class:`TokenExpiry` — a node's tokens expire early, at a time;
- :class:`NodeRestart` — the pod orchestrator restarts a node, at a time;
- :class:`NodeOffline` — a node's pod is unreachable for a time window.

Times are seconds since the stack started, in stack time (already scaled). Every decision the plan
takes is drawn from one ``random.Random(seed)``, so the same run with the same seed injects the same
faults. :func:`parse_faults` reads the compact text form used by ``flame sim --faults`` and refuses, with a
:class:`FaultSpecError` naming the bad part, anything it cannot use as written: a probability outside
[0, 1], a time that is negative or not finite, a window that ends before it starts, a route with more
than two ends. :meth:`FaultPlan.validate` refuses rules naming a node the run does not have. A rule that
would silently never fire is worse than no rule: the run would seem to prove a resilience it never tested.
"""

from __future__ import annotations

import math
import random
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from flame.errors import ConfigurationError

DeliveryFaultKind = Literal["drop", "duplicate", "delay", "reorder"]
_SERVICES = ("message-broker", "storage", "hub-adapter", "kong", "po")


@dataclass(frozen=True)
class DeliveryFault:
    """Disturb webhook deliveries from ``sender`` to ``receiver`` (node names; None = any)."""

    kind: DeliveryFaultKind
    probability: float = 1.0
    sender: str | None = None
    receiver: str | None = None
    #: For ``delay``: the added delay; for ``reorder``: the window in which deliveries are shuffled.
    seconds: float = 0.05
    start: float = 0.0
    end: float = math.inf
    #: At most this many deliveries are affected (None: no limit).
    limit: int | None = None


@dataclass(frozen=True)
class ServiceOutage:
    """``service`` (``message-broker`` or ``storage``) of ``node`` (None = all) answers ``status``."""

    service: Literal["message-broker", "storage", "hub-adapter", "kong", "po"]
    start: float
    end: float
    node: str | None = None
    status: int = 503


@dataclass(frozen=True)
class TokenExpiry:
    """Every token of ``node`` minted so far expires at ``at``."""

    node: str
    at: float


@dataclass(frozen=True)
class NodeRestart:
    """The pod orchestrator restarts ``node`` at ``at`` (new ``DEPLOYMENT_NAME``, new token)."""

    node: str
    at: float


@dataclass(frozen=True)
class NodeOffline:
    """``node``'s pod does not answer from ``start`` to ``end``."""

    node: str
    start: float
    end: float


Rule = DeliveryFault | ServiceOutage | TokenExpiry | NodeRestart | NodeOffline


@dataclass(frozen=True)
class DeliveryDecision:
    """What happens to one webhook delivery."""

    drop: bool = False
    copies: int = 1
    delay: float = 0.0
    reasons: tuple[str, ...] = ()


@dataclass
class FaultPlan:
    """The faults of one run; decisions are drawn from ``random.Random(seed)``."""

    rules: list[Rule] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._used: dict[int, int] = {}
        self._lock = threading.Lock()
        self._texts: dict[int, str] = {}

    def add(self, rule: Rule, *, text: str | None = None) -> FaultPlan:
        """Add a rule (also while the stack runs); returns the plan. ``text``: the rule as written."""
        with self._lock:
            self.rules.append(rule)
            if text is not None:
                self._texts[id(rule)] = text
        return self

    def validate(self, nodes: Iterable[str]) -> None:
        """Raise :class:`FaultSpecError` for a rule naming a node that is not one of ``nodes``.

        Call it once the run's nodes are known, before anything starts: a rule for a node that does
        not exist would otherwise never fire, silently.
        """
        known = list(nodes)
        expected = f"a node of this run: {', '.join(known)}"
        with self._lock:
            rules = list(self.rules)
        for rule in rules:
            names = (rule.sender, rule.receiver) if isinstance(rule, DeliveryFault) else (rule.node,)
            for name in names:
                if name is not None and name not in known:
                    text = self._texts.get(id(rule), repr(rule))
                    raise FaultSpecError(
                        text, f"there is no node {name!r} in this run", expected, unreadable=False
                    )

    def delivery(self, sender: str | None, receiver: str, now: float) -> DeliveryDecision:
        """Decide the fate of one delivery of a message from ``sender`` to ``receiver`` at ``now``."""
        drop, copies, delay, reasons = False, 1, 0.0, []
        with self._lock:
            for index, rule in enumerate(self.rules):
                if not isinstance(rule, DeliveryFault) or not rule.start <= now < rule.end:
                    continue
                if rule.sender not in (None, sender) or rule.receiver not in (None, receiver):
                    continue
                if rule.limit is not None and self._used.get(index, 0) >= rule.limit:
                    continue
                if self._rng.random() >= rule.probability:
                    continue
                self._used[index] = self._used.get(index, 0) + 1
                reasons.append(rule.kind)
                if rule.kind == "drop":
                    drop = True
                elif rule.kind == "duplicate":
                    copies += 1
                elif rule.kind == "delay":
                    delay += rule.seconds
                else:
                    delay += self._rng.uniform(0.0, rule.seconds)
        return DeliveryDecision(drop=drop, copies=copies, delay=delay, reasons=tuple(reasons))

    def outage(self, service: str, node: str, now: float) -> int | None:
        """The status a service answers at ``now`` because of an outage, or None."""
        with self._lock:
            for rule in self.rules:
                if (
                    isinstance(rule, ServiceOutage)
                    and rule.service == service
                    and rule.node in (None, node)
                    and rule.start <= now < rule.end
                ):
                    return rule.status
        return None

    def offline(self, node: str, now: float) -> bool:
        """Whether ``node``'s pod is unreachable at ``now``."""
        if not self.rules:  # asked for every request: a plan without faults answers without the lock
            return False
        with self._lock:
            return any(
                isinstance(rule, NodeOffline) and rule.node == node and rule.start <= now < rule.end
                for rule in self.rules
            )

    def timed(self) -> list[TokenExpiry | NodeRestart]:
        """The rules that fire once at a time, in time order."""
        with self._lock:
            timed = [r for r in self.rules if isinstance(r, TokenExpiry | NodeRestart)]
        return sorted(timed, key=lambda r: r.at)


class FaultSpecError(ConfigurationError, ValueError):
    """A fault rule that cannot be used: bad syntax, a number out of range, or a node the run lacks.

    ``rule`` is the rule's text, ``problem`` what is wrong with which part, ``expected`` what a valid rule
    looks like. Also a :class:`ValueError`, as the parser raised before.
    """

    def __init__(self, rule: str, problem: str, expected: str, *, unreadable: bool = True) -> None:
        self.rule = rule
        super().__init__(f"{'cannot read ' if unreadable else ''}fault rule {rule!r}", problem, expected)


_FORMS = {
    "drop": "drop=P or drop=P@SENDER>RECEIVER, P a probability in [0, 1], e.g. drop=0.2@node-1>aggregator",
    "duplicate": "duplicate=P or duplicate=P@SENDER>RECEIVER, P a probability in [0, 1]",
    "reorder": "reorder=P or reorder=P:SECONDS (the shuffle window, > 0), optionally @SENDER>RECEIVER",
    "delay": "delay=P or delay=P:SECONDS (the added delay, > 0), optionally @SENDER>RECEIVER, e.g. delay=0.3:0.05",
    "outage": f"outage=SERVICE@START-END or outage=SERVICE@START-END@NODE (START alone: to the end), "
    f"SERVICE one of {', '.join(_SERVICES)}",
    "expire": "expire=NODE@SECONDS, e.g. expire=node-1@3",
    "restart": "restart=NODE@SECONDS, e.g. restart=node-2@5",
    "offline": "offline=NODE@START-END (NODE@START: for the rest of the run), e.g. offline=node-1@2-6",
}
_KINDS = ", ".join(_FORMS)


def parse_faults(spec: str, seed: int = 0) -> FaultPlan:
    """Read the text form of a fault plan: rules separated by ``;``.

    ===================================== ==================================================
    ``drop=0.2``                          drop 20 % of deliveries
    ``drop=0.2@a>b``                      only from node ``a`` to node ``b`` (``a>`` / ``>b``: from
                                          ``a`` / to ``b``)
    ``duplicate=0.1``, ``reorder=0.5``    duplicate / reorder a share of deliveries
    ``delay=0.3:0.05``                    delay 30 % of deliveries by 0.05 s
    ``outage=message-broker@2-4``         the broker of every node answers 503 from 2 s to 4 s (``@2``:
                                          from 2 s to the end of the run)
    ``outage=storage@2-4@a``              only node ``a``'s storage
    ``expire=a@3``                        node ``a``'s tokens expire at 3 s
    ``restart=a@5``                       node ``a`` is restarted at 5 s
    ``offline=a@2-6``                     node ``a`` is unreachable from 2 s to 6 s (``a@2``: to the end)
    ===================================== ==================================================

    Probabilities lie in [0, 1]; times and durations are finite and not negative; a window starts
    before it ends. Raises :class:`FaultSpecError` naming the rule and the bad part. Node names are
    checked against a run's nodes by :meth:`FaultPlan.validate`, once they are known.
    """
    if not isinstance(spec, str):
        raise FaultSpecError(repr(spec), "a fault plan is text", "rules separated by ';'")
    plan = FaultPlan(seed=seed)
    for raw in filter(None, (part.strip() for part in spec.split(";"))):
        plan.add(_parse_rule(raw), text=raw)
    return plan


def _parse_rule(raw: str) -> Rule:
    name, equals, value = raw.partition("=")
    name = name.strip()
    if name not in _FORMS:
        raise FaultSpecError(raw, f"unknown fault {name!r}", f"one of {_KINDS}, as NAME=VALUE")
    form = _FORMS[name]
    if not equals or not value.strip():
        raise FaultSpecError(raw, f"{name} needs a value after '='", form)
    parts = [part.strip() for part in value.split("@")]
    if name in ("drop", "duplicate", "reorder", "delay"):
        return _delivery_rule(raw, name, parts, form)
    if name == "outage":
        if len(parts) not in (2, 3):
            raise FaultSpecError(raw, "an outage has a service, a window and optionally a node", form)
        if parts[0] not in _SERVICES:
            raise FaultSpecError(raw, f"unknown service {parts[0]!r}", form)
        start, end = _window(raw, parts[1], form)
        node = _node(raw, parts[2], form) if len(parts) > 2 else None
        service: Any = parts[0]
        return ServiceOutage(service=service, start=start, end=end, node=node)
    if name in ("expire", "restart"):
        if len(parts) != 2:
            raise FaultSpecError(raw, f"{name} takes a node and a time, as NODE@SECONDS", form)
        node = _node(raw, parts[0], form)
        at = _number(raw, parts[1], "the time", form)
        return TokenExpiry(node=node, at=at) if name == "expire" else NodeRestart(node=node, at=at)
    # offline
    if len(parts) != 2:
        raise FaultSpecError(raw, "offline takes a node and a window, as NODE@START-END", form)
    start, end = _window(raw, parts[1], form)
    return NodeOffline(node=_node(raw, parts[0], form), start=start, end=end)


def _delivery_rule(raw: str, name: str, parts: list[str], form: str) -> DeliveryFault:
    if len(parts) > 2:
        raise FaultSpecError(raw, "more than one '@'", form)
    amount, colon, seconds_text = parts[0].partition(":")
    probability = _number(raw, amount.strip(), "the probability", form)
    if probability > 1.0:
        raise FaultSpecError(raw, f"the probability {amount.strip()} is above 1", form)
    seconds = 0.05
    if colon:
        if name not in ("delay", "reorder"):
            raise FaultSpecError(raw, f"{name} takes no ':SECONDS' (only delay and reorder do)", form)
        seconds = _number(raw, seconds_text.strip(), "the seconds", form)
        if seconds == 0:
            raise FaultSpecError(raw, "the seconds must be above 0", form)
    sender = receiver = None
    if len(parts) == 2:
        sender, receiver = _route(raw, parts[1], form)
    kind: Any = name
    return DeliveryFault(
        kind=kind, probability=probability, sender=sender, receiver=receiver, seconds=seconds
    )


def _route(raw: str, text: str, form: str) -> tuple[str | None, str | None]:
    """``SENDER>RECEIVER``, ``SENDER>`` or ``>RECEIVER`` (a bare ``SENDER`` as before)."""
    ends = [end.strip() for end in text.split(">")]
    if len(ends) > 2:
        raise FaultSpecError(raw, f"the route {text!r} has more than one '>'", form)
    if not any(ends):
        raise FaultSpecError(raw, f"the route {text!r} names no node", form)
    sender = _node(raw, ends[0], form) if ends[0] else None
    receiver = _node(raw, ends[1], form) if len(ends) > 1 and ends[1] else None
    return sender, receiver


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _node(raw: str, text: str, form: str) -> str:
    if not _NODE_NAME.fullmatch(text):
        raise FaultSpecError(raw, f"{text!r} is not a node name", form)
    return text


def _number(raw: str, text: str, what: str, form: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FaultSpecError(raw, f"{what} {text!r} is not a number", form) from None
    if not math.isfinite(value):
        raise FaultSpecError(raw, f"{what} {text!r} is not finite", form)
    if value < 0:
        raise FaultSpecError(raw, f"{what} {text!r} is negative", form)
    return value


def _window(raw: str, text: str, form: str) -> tuple[float, float]:
    """``START-END``, or ``START`` / ``START-`` for a window lasting to the end of the run."""
    start_text, _, end_text = text.partition("-")
    start = _number(raw, start_text.strip(), "the window's start", form)
    if not end_text.strip():
        return start, math.inf
    end = _number(raw, end_text.strip(), "the window's end", form)
    if not start < end:
        raise FaultSpecError(raw, f"the window {text!r} does not start before it ends", form)
    return start, end
