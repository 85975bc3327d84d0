"""flame: the SDK for federated analyses on FLAME nodes."""

from flame.errors import FlameError

__version__ = "0.1.0"

__all__ = ["FlameError", "__version__"]
