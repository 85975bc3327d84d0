"""The exception hierarchy of the FLAME SDK.

Every error the SDK raises on purpose is a :class:`FlameError`. Catch that to handle all of them;
catch a subclass to handle one kind::

    FlameError
    ├── ConfigurationError      a missing or malformed environment variable or setting
    ├── TokenError              a token that cannot be used
    │   ├── TokenMalformedError     not a JWT, or a payload that does not decode
    │   ├── TokenExpiredError       past its ``exp`` (beyond the clock-skew allowance)
    │   ├── TokenAudienceError      issued for another analysis (``client_id``/``azp``)
    │   └── TokenSignatureError     the RS256 signature does not verify against the JWKS
    ├── ServiceError            a node service answered with an error or not at all
    │   └── ServiceUnavailableError  unreachable, or 5xx/429 after all retries
    ├── ProtocolError           a peer or service broke the wire contract or the round protocol
    ├── FederationError         the federated analysis cannot go on (quorum not reached, aborted)
    ├── FlameTimeoutError       a bounded wait ran out (also a :class:`TimeoutError`)
    ├── PayloadError            a payload or argument that cannot be encoded, decoded or sent
    │   ├── PickleRefusedError      pickled data met without the ``allow_pickle`` opt-in
    │   ├── StorageArgumentError    an argument storage would refuse (bad tag, non-finite number)
    │   └── AggregationError        updates that cannot be aggregated (wrong form, shape or domain)
    ├── DataNotFoundError       requested data is in none of the node's data sources
    └── DisclosureRefusedError  a result that would disclose too much (minimum counts, DP budget)

Messages say what failed and what to do; they never contain a token or any part of one.
"""

from __future__ import annotations

from collections.abc import Iterable


class FlameError(Exception):
    """Base class of every error raised by the FLAME SDK."""


class ConfigurationError(FlameError):
    """A required environment variable or setting is missing or malformed.

    ``variable`` names it; the message says what a valid value looks like.
    """

    def __init__(self, variable: str, problem: str, expected: str) -> None:
        self.variable = variable
        self.problem = problem
        self.expected = expected
        super().__init__(f"{variable}: {problem}. Expected {expected}.")


class TokenError(FlameError):
    """A token cannot be used. The message never contains the token."""

    def __init__(self, message: str, *, token_name: str = "KEYCLOAK_TOKEN") -> None:
        self.token_name = token_name
        super().__init__(f"{token_name}: {message}")


class TokenMalformedError(TokenError):
    """The token is not a well-formed JWT, or its payload is not a JSON object."""


class TokenExpiredError(TokenError):
    """The token's ``exp`` lies in the past (beyond the clock-skew allowance)."""

    def __init__(
        self, message: str, *, expired_seconds_ago: float, token_name: str = "KEYCLOAK_TOKEN"
    ) -> None:
        self.expired_seconds_ago = expired_seconds_ago
        super().__init__(message, token_name=token_name)


class TokenAudienceError(TokenError):
    """The token was issued for another analysis: ``client_id``/``azp`` differ from ``ANALYSIS_ID``."""


class TokenSignatureError(TokenError):
    """The token's RS256 signature does not verify against the node Keycloak's key set."""


class ServiceError(FlameError):
    """A node service answered with an error status, or a request to it failed.

    ``service`` is one of ``message-broker``, ``storage``, ``hub-adapter``, ``kong``, ``po``,
    ``nginx``; ``request`` is ``"METHOD /path"``; ``status`` the HTTP status or ``None`` when
    no answer came.
    """

    def __init__(
        self,
        service: str,
        request: str,
        status: int | None,
        detail: str = "",
        *,
        hint: str = "",
    ) -> None:
        self.service = service
        self.request = request
        self.status = status
        self.detail = detail
        answered = f"answered {status}" if status is not None else "did not answer"
        text = f"{service}: {request} {answered}"
        if detail:
            text += f": {detail}"
        if hint:
            text += f". {hint}"
        super().__init__(text)


class ServiceUnavailableError(ServiceError):
    """A node service could not be reached, or kept answering 5xx/429 through every retry."""


class ProtocolError(FlameError):
    """A peer or a service broke the wire contract or the federated round protocol."""


class FederationError(FlameError):
    """The federated analysis cannot go on: too few nodes answered in time, or the aggregator aborted.

    ``missing`` lists the node ids that did not answer, if that is the cause.
    """

    def __init__(self, message: str, missing: Iterable[str] = ()) -> None:
        self.missing = list(missing)
        super().__init__(message)


class FlameTimeoutError(FlameError, TimeoutError):
    """A bounded wait ran out.

    ``awaited`` says what was waited for, ``timeout`` for how long (seconds), ``missing`` lists
    what had not arrived (for example node ids), so a caller can decide what to do next.
    """

    def __init__(self, awaited: str, timeout: float, missing: Iterable[str] = (), hint: str = "") -> None:
        self.awaited = awaited
        self.timeout = timeout
        self.missing = list(missing)
        text = f"timed out after {timeout:g} s waiting for {awaited}"
        if self.missing:
            text += f"; still missing: {', '.join(self.missing)}"
        if hint:
            text += f". {hint}"
        super().__init__(text)


class PayloadError(FlameError):
    """A payload cannot be encoded or decoded by :mod:`flame.codec`."""


class PickleRefusedError(PayloadError):
    """Pickled data was met, but unpickling was not allowed.

    Pickle can run arbitrary code. Pass ``allow_pickle=True`` only for data from peers you trust
    that run PrivateAIM's SDK; a restricted unpickler then accepts builtins, NumPy and pandas only.
    """


class StorageArgumentError(PayloadError, ValueError):
    """An argument the storage service would refuse (a bad tag, a non-finite number), refused before
    any request is sent."""


class AggregationError(PayloadError, ValueError):
    """Updates that cannot be aggregated.

    Raised for no updates at all, an update of the wrong form (missing or unknown keys), values of
    the wrong kind or shape, and values outside their domain (a negative weight or count, a
    non-finite summary statistic). The message names the function and the node.
    """


class DataNotFoundError(FlameError, LookupError):
    """Requested data is in none of the node's data sources (for example an S3 key no source has)."""


class DisclosureRefusedError(FlameError):
    """Releasing a result was refused because it would disclose too much about individuals.

    ``rule`` names the disclosure rule (``row-level``, ``identifier-column``, ``min-cell-count``, ...),
    ``path`` the offending field of the payload (``payload.age.n``), ``destination`` where it was to go;
    nothing of the payload left the node.
    """

    def __init__(self, message: str, *, rule: str = "", path: str = "", destination: str = "") -> None:
        self.rule = rule
        self.path = path
        self.destination = destination
        super().__init__(message)


__all__ = [
    "AggregationError",
    "ConfigurationError",
    "DataNotFoundError",
    "DisclosureRefusedError",
    "FederationError",
    "FlameError",
    "FlameTimeoutError",
    "PayloadError",
    "PickleRefusedError",
    "ProtocolError",
    "ServiceError",
    "ServiceUnavailableError",
    "StorageArgumentError",
    "TokenAudienceError",
    "TokenError",
    "TokenExpiredError",
    "TokenMalformedError",
    "TokenSignatureError",
]
