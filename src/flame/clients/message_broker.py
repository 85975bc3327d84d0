"""Client of the node's message broker."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Literal, TypedDict

from flame.clients.base import ServiceClient
from flame.errors import ProtocolError, ServiceUnavailableError

log = logging.getLogger(__name__)


class Participant(TypedDict):
    """A participant of the analysis as the broker lists it."""

    nodeId: str
    nodeType: Literal["default", "aggregator", "unknown"]


class Subscription(TypedDict):
    subscriptionId: str
    analysisId: str
    webhookUrl: str


class MessageBrokerClient(ServiceClient):
    """Participants, webhook subscriptions and sending messages, for one analysis."""

    service = "message-broker"

    def __init__(self, *args: Any, analysis_id: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.analysis_id = analysis_id

    def _path(self, tail: str) -> str:
        return f"/analyses/{self.analysis_id}{tail}"

    async def participants(self) -> list[Participant]:
        """All participants of the analysis, this node included."""
        body = (await self.request("GET", self._path("/participants"))).json()
        if not isinstance(body, list) or not all(isinstance(p, dict) and "nodeId" in p for p in body):
            raise ProtocolError(
                f"message-broker: participants is not a list of {{nodeId, nodeType}}: {body!r:.200}"
            )
        return body

    async def self_participant(
        self, *, token: str | None = None, timeout: float | None = None
    ) -> Participant:
        """This node: its id and type. A 404 means it does not take part in the analysis.

        With ``token``: asked once with that token instead of the current one (a refused token is a
        :class:`ServiceError` with status 401, and the current token is left alone).
        """
        body = (
            await self.request(
                "GET",
                self._path("/participants/self"),
                hint="is ANALYSIS_ID right, and does this node take part in the analysis?",
                token=token,
                retry=False if token is not None else None,
                timeout=timeout,
            )
        ).json()
        if not isinstance(body, dict) or "nodeId" not in body or "nodeType" not in body:
            raise ProtocolError(
                f"message-broker: participants/self is not {{nodeId, nodeType}}: {body!r:.200}"
            )
        return body  # type: ignore[return-value]

    async def subscribe(self, webhook_url: str) -> Subscription:
        """Subscribe ``webhook_url`` for the analysis' messages, retried like an idempotent request.

        The broker does not de-duplicate subscriptions (every POST adds one, and each would deliver
        every message once more), so a POST that failed is not simply repeated: before each retry the
        subscriptions are listed, and one already made for ``webhook_url`` (the POST was taken, its
        answer lost) is used instead. Raises :class:`ServiceUnavailableError` after the last attempt.
        """
        delays = self.retry.delays(self._rng)
        look_first = False
        while True:
            try:
                if look_first:
                    existing = await self._subscription_for(webhook_url)
                    if existing is not None:
                        log.info("the broker had taken the subscription whose answer was lost; using it")
                        return existing
                response = await self.request(
                    "POST",
                    self._path("/messages/subscriptions"),
                    json={"webhookUrl": webhook_url},
                    expected=(201,),
                    retry=False,
                )
                body: Subscription = response.json()
                return body
            except ServiceUnavailableError as exc:
                failure = exc
            delay = next(delays, None)
            if delay is None:
                raise failure
            log.info("subscribing failed (%s); retrying in %.2f s", failure, delay)
            await asyncio.sleep(delay)
            look_first = True

    async def _subscription_for(self, webhook_url: str) -> Subscription | None:
        """The analysis' subscription of ``webhook_url``, if there is one (asked once, not retried)."""
        response = await self.request("GET", self._path("/messages/subscriptions"), retry=False)
        found = response.json()
        if not isinstance(found, list):
            raise ProtocolError(f"message-broker: the subscriptions are not a list: {found!r:.200}")
        for subscription in found:
            if isinstance(subscription, dict) and subscription.get("webhookUrl") == webhook_url:
                return subscription  # type: ignore[return-value]
        return None

    async def unsubscribe(self, subscription_id: str) -> None:
        await self.request(
            "DELETE", self._path(f"/messages/subscriptions/{subscription_id}"), expected=(204, 404)
        )

    async def subscriptions(self) -> list[Subscription]:
        body: list[Subscription] = (await self.request("GET", self._path("/messages/subscriptions"))).json()
        return body

    async def send(self, recipients: list[str], message: Any) -> None:
        """Hand a message to the broker for ``recipients`` (202). Delivery is not confirmed by this."""
        # A retried POST may deliver twice; receivers de-duplicate by meta.id (the envelope).
        await self.request(
            "POST",
            self._path("/messages"),
            json={"recipients": recipients, "message": message},
            expected=(202,),
            retry=True,
        )

    async def broadcast(self, message: Any) -> None:
        await self.request(
            "POST", self._path("/messages/broadcast"), json={"message": message}, expected=(202,), retry=True
        )
