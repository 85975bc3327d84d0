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
faults. :func:`parse_faults` reads the compact text form used by ``flame sim --faults``.
"""

from __future__ import annotations

import math
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Literal

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

    def add(self, rule: Rule) -> FaultPlan:
        """Add a rule (also while the stack runs); returns the plan."""
        with self._lock:
            self.rules.append(rule)
        return self

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


def parse_faults(spec: str, seed: int = 0) -> FaultPlan:
    """Read the text form of a fault plan: rules separated by ``;``.

    ===================================== ==================================================
    ``drop=0.2``                          drop 20 % of deliveries
    ``drop=0.2@a>b``                      only from node ``a`` to node ``b``
    ``duplicate=0.1``, ``reorder=0.5``    duplicate / reorder a share of deliveries
    ``delay=0.3:0.05``                    delay 30 % of deliveries by 0.05 s
    ``outage=message-broker@2-4``         the broker of every node answers 503 from 2 s to 4 s
    ``outage=storage@2-4@a``              only node ``a``'s storage
    ``expire=a@3``                        node ``a``'s tokens expire at 3 s
    ``restart=a@5``                       node ``a`` is restarted at 5 s
    ``offline=a@2-6``                     node ``a`` is unreachable from 2 s to 6 s
    ===================================== ==================================================
    """
    plan = FaultPlan(seed=seed)
    for raw in filter(None, (part.strip() for part in spec.split(";"))):
        try:
            plan.add(_parse_rule(raw))
        except (ValueError, IndexError) as exc:
            raise ValueError(
                f"cannot read fault rule {raw!r}: {exc}. See flame.sim.faults.parse_faults."
            ) from None
    return plan


def _parse_rule(raw: str) -> Rule:
    name, _, value = raw.partition("=")
    name = name.strip()
    parts = value.split("@")
    if name in ("drop", "duplicate", "reorder", "delay"):
        amount, _, seconds = parts[0].partition(":")
        probability = float(amount)
        if not 0.0 <= probability <= 1.0:
            raise ValueError("the probability must lie between 0 and 1")
        sender = receiver = None
        if len(parts) > 1:
            pair = parts[1].split(">")
            sender, receiver = (pair[0] or None), (pair[1] or None if len(pair) > 1 else None)
        return DeliveryFault(
            kind=name,  # type: ignore[arg-type]
            probability=probability,
            sender=sender,
            receiver=receiver,
            seconds=float(seconds) if seconds else 0.05,
        )
    if name == "outage":
        start, end = _window(parts[1])
        if parts[0] not in _SERVICES:
            raise ValueError(f"unknown service {parts[0]!r} ({', '.join(_SERVICES)})")
        service: Any = parts[0]
        return ServiceOutage(service=service, start=start, end=end, node=parts[2] if len(parts) > 2 else None)
    if name == "expire":
        return TokenExpiry(node=parts[0], at=float(parts[1]))
    if name == "restart":
        return NodeRestart(node=parts[0], at=float(parts[1]))
    if name == "offline":
        start, end = _window(parts[1])
        return NodeOffline(node=parts[0], start=start, end=end)
    raise ValueError(
        f"unknown fault {name!r} (drop, duplicate, reorder, delay, outage, expire, restart, offline)"
    )


def _window(text: str) -> tuple[float, float]:
    start, _, end = text.partition("-")
    return float(start), float(end) if end else math.inf
