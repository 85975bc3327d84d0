"""Timing and behaviour settings of the emulated node stack."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class StackSettings:
    """How the emulated node stack behaves in time.

    Defaults are the real platform's values. ``time_scale`` multiplies every platform delay and
    period (webhook retry delays, the pod orchestrator's period, its health-check timeout and its
    token-refresh threshold), so ``time_scale=0.01`` runs the same policy a hundred times faster.
    """

    #: First retry delay of a webhook delivery answered with 5xx (seconds); doubles per retry.
    delivery_base_delay: float = 1.0
    #: Retries of a webhook delivery after the first attempt, only on 5xx.
    delivery_max_retries: int = 5
    #: Jitter of each retry delay, as a fraction of it (0.75: anywhere from -75 % to +75 %, never below
    #: the first delay), as the broker's Reactor ``Retry.backoff(...).jitter(0.75)`` draws it.
    delivery_jitter: float = 0.75
    #: Response timeout of one webhook POST (seconds); a timeout drops the message. ``math.inf`` (the real
    #: broker): no response timeout, only connection failures drop a message.
    delivery_timeout: float = math.inf
    #: How long the broker's HTTP client tries to connect before the delivery fails (seconds, not scaled;
    #: Reactor Netty's default).
    delivery_connect_timeout: float = 30.0
    #: Period of the pod orchestrator's health, partner-status and token checks (seconds).
    po_period: float = 10.0
    #: How long one health check asks a node's /healthz before it counts as failed (seconds).
    po_healthz_timeout: float = 10.0
    #: Within one health check, the pause before asking /healthz again after no answer (seconds).
    po_healthz_retry: float = 1.0
    #: Restarts of one node by the pod orchestrator, after which it marks the node failed instead.
    po_max_restarts: int = 10
    #: The PO pushes a new token when the remaining lifetime falls under this (seconds).
    po_token_threshold: float = 21.0
    #: Whether the pod orchestrator runs its periodic loop at all.
    po_enabled: bool = True
    #: Lifetime of minted Keycloak tokens (seconds); FLAME sees 300 to 1800.
    token_lifetime: float = 1800.0
    #: Multiplies every delay and period above except the token lifetime and the restart count.
    time_scale: float = 1.0

    def scaled(self, seconds: float) -> float:
        """A platform delay in this stack's time."""
        return seconds * self.time_scale

    def delivery_response_timeout(self) -> float | None:
        """The scaled response timeout of one webhook POST, None for none."""
        seconds = self.scaled(self.delivery_timeout)
        return seconds if math.isfinite(seconds) else None

    def delivery_http_timeout(self) -> Any:
        """The timeout of the broker's webhook client: connect bounded, response as ``delivery_timeout``."""
        import httpx

        response = self.delivery_response_timeout()
        connect = self.delivery_connect_timeout
        if response is not None:
            connect = min(connect, response)
        return httpx.Timeout(response, connect=connect)

    @classmethod
    def fast(cls, **changes: object) -> StackSettings:
        """Settings for tests: the real policy, 100 times faster.

        The health-check timeout is scaled less (to 2 s), so that a loaded machine does not turn slow
        answers into failed health checks that the real platform would not see; webhook deliveries have
        no response timeout, as on FLAME.
        """
        base = cls(time_scale=0.01, po_healthz_timeout=200.0)
        return replace(base, **changes)  # type: ignore[arg-type]
