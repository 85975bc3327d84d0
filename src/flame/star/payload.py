"""How the compatibility layer encodes intermediate data for peers, and decodes theirs.

Nodes running PrivateAIM's SDK pickle everything they store (``pickle.dumps``) and unpickle everything
they read (``pickle.loads``). Our nodes use :mod:`flame.codec`, which runs no code when decoding. The
policy below lets both share a federation:

* **Reading.** A payload that is a pickle (:func:`flame.codec.is_pickle`) comes from a PrivateAIM peer; it
  is decoded with the restricted unpickler of :func:`flame.codec.decode` (``allow_pickle=True``: plain
  data, NumPy and pandas only, never arbitrary classes), and the peer is remembered as a pickle peer.
  That unpickler runs no library code on the pickle's say: every global is a stand-in that records
  what the pickle asks for, and :mod:`flame.codec` rebuilds arrays and frames itself from checked
  dtypes, shapes and bytes, within a memory budget of the pickle's own size. A hostile peer can
  therefore not crash this node, change its classes, open its files or exhaust its memory; it can
  only make that one payload fail with :class:`~flame.errors.PayloadError`.
  In ``codec`` mode pickles are refused (:class:`~flame.errors.PickleRefusedError`).
* **Writing.** What we store for a peer depends on the mode, set by ``FLAME_COMPAT_PAYLOAD``:

  ============ =======================================================================================
  ``auto``     (default) :mod:`flame.codec`, except for a peer already seen sending pickle: that peer
               gets pickle, since PrivateAIM's SDK can read nothing else
  ``pickle``   always pickle (protocol 4). Needed when a PrivateAIM node must read our data before it
               sent us any, e.g. a PrivateAIM *aggregator* receiving our analyzers' first results
  ``codec``    always :mod:`flame.codec`; pickles from peers are refused (a federation of our nodes only)
  ============ =======================================================================================

Local results (``save_intermediate_data(location='local')``) follow the same rule with no peer: codec,
or pickle in ``pickle`` mode. Final results are never affected: their format is ``output_type``.
"""

from __future__ import annotations

import logging
import os
import pickle
import threading
from typing import Any, Literal

from flame import codec
from flame.errors import ConfigurationError, PickleRefusedError

log = logging.getLogger(__name__)

PayloadMode = Literal["auto", "codec", "pickle"]
PAYLOAD_MODES: tuple[PayloadMode, ...] = ("auto", "codec", "pickle")
#: The environment variable that chooses the mode.
PAYLOAD_ENV = "FLAME_COMPAT_PAYLOAD"
#: Pickle protocol written for PrivateAIM peers (readable by every Python 3 they run).
PICKLE_PROTOCOL = 4


def payload_mode(value: str | None = None) -> PayloadMode:
    """The mode ``value`` names, else ``FLAME_COMPAT_PAYLOAD``, else ``auto``."""
    raw = value if value is not None else os.environ.get(PAYLOAD_ENV, "")
    mode = raw.strip().lower() or "auto"
    if mode not in PAYLOAD_MODES:
        raise ConfigurationError(PAYLOAD_ENV, f"{raw!r} is not a payload mode", "'auto', 'codec' or 'pickle'")
    return mode


class PayloadPolicy:
    """Encodes for and decodes from peers according to the mode; remembers which peers send pickle.

    Thread-safe: the set of pickle peers is guarded by a lock.
    """

    def __init__(self, mode: str | None = None) -> None:
        self.mode: PayloadMode = payload_mode(mode)
        self._pickle_peers: set[str] = set()
        self._lock = threading.Lock()

    @property
    def pickle_peers(self) -> set[str]:
        """Peers seen sending pickle (they get pickle back in ``auto`` mode)."""
        with self._lock:
            return set(self._pickle_peers)

    def sends_pickle_to(self, peer: str | None) -> bool:
        if self.mode == "pickle":
            return True
        if self.mode == "codec" or peer is None:
            return False
        with self._lock:
            return peer in self._pickle_peers

    def encode_for(self, peer: str | None, data: Any) -> bytes:
        """The bytes to store for ``peer`` (None: a local result)."""
        if self.sends_pickle_to(peer):
            return pickle.dumps(data, protocol=PICKLE_PROTOCOL)
        return codec.encode(data)

    def decode_from(self, peer: str | None, raw: bytes) -> Any:
        """Decode what ``peer`` (None: unknown, or this node's storage) stored; see the module docstring."""
        if not codec.is_pickle(raw):
            return codec.decode(raw)
        if self.mode == "codec":
            raise PickleRefusedError(
                f"{'node ' + peer if peer else 'storage'} sent pickled data, which {PAYLOAD_ENV}=codec refuses; "
                f"set {PAYLOAD_ENV}=auto to read it with the restricted unpickler"
            )
        value = codec.decode(raw, allow_pickle=True)
        if peer is not None:
            with self._lock:
                new = peer not in self._pickle_peers
                self._pickle_peers.add(peer)
            if new:
                log.info("node %s sends pickled data (PrivateAIM's SDK); it gets pickle back", peer)
        return value


__all__ = ["PAYLOAD_ENV", "PAYLOAD_MODES", "PICKLE_PROTOCOL", "PayloadMode", "PayloadPolicy", "payload_mode"]
