"""``flamesdk``: the import name of PrivateAIM's core SDK, so that ``from flamesdk import FlameCoreSDK``
in existing analyses gets this SDK's implementation (:class:`flame.star.core_sdk.FlameCoreSDK`)."""

from flame.star.core_sdk import FlameCoreSDK
from flame.star.payload import PAYLOAD_ENV

__all__ = ["PAYLOAD_ENV", "FlameCoreSDK"]
