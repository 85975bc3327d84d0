"""Fixed safe primes for threshold Paillier tests: dealing from random safe primes takes seconds."""

from __future__ import annotations

import functools

from flame.protocols.threshold_paillier import KeyShare, ThresholdPublicKey, _deal

SAFE_PRIMES_1024 = (
    int(
        "f2e7d6f97fd0799328ab266fb6dcb76982d6037affa84d2ee7e93b8dda12b84b7ba260d0c94670383351f41f08d24408"
        "6b155a80e7061e1344e34ce79a1ac58bdee4784b1cb6ca2304bc65cd33ef987f5947f0fdd7f7ad893ac9afc0eed91951"
        "696ae24691e72e8e7c7078528f8b51391aa2b5f0da9adddaf36d32dc590cd9eb",
        16,
    ),
    int(
        "f829760b0a24f8ea6331e3e42829a91973c1d58f17c252159233073d5847e225678dc071c1b4de8761ea8cc43974b027"
        "bf9cb5c83e3a03b623576bb36d89d57e7959e3f4e425cf0238c6964525b06d2df254103b08940dd5f4588fb9084ae32f"
        "5ac275aaf83d1fd87108ac24ec2c542a18a3712d643d41f44fc93ed53362779f",
        16,
    ),
    int(
        "da23f80acca19a0bc9fe5aa5817e6fa6304d2d5f75c1a3017c78044fa56a6685e9d05f6dca0f0d7f60307e9d02937909"
        "a49a66341298fe852f6ee52d640350a5bdc881d45ad3f858245395f2cd17818018f733319d0eb38f213404419026a804"
        "7d409eef08ef71f2a1067ec491368c97bb67a470a0ebf5a0cfc2c05af5b8129b",
        16,
    ),
    int(
        "d3f8a211610927235d0ae676b6e56ebc663992f467eec923932ed9898ef9218a401dc3b399120a9c3e3f890bae475df9"
        "f75fb26d0f229dcff5d70b342ca9d526e8a054c1128856d198fffdde5e3459c5c735d48b5f003980df5d13ed5dc8a960"
        "c1256d13b171d1465711154ae49eca14676b38e32e1651f6fa67c5918e2699f3",
        16,
    ),
)


@functools.cache
def dealt(parties: int, threshold: int, pair: int = 0) -> tuple[ThresholdPublicKey, tuple[KeyShare, ...]]:
    """A 2048-bit key of fixed safe primes (``pair`` 0 or 1), shared ``threshold``-of-``parties``."""
    p, q = SAFE_PRIMES_1024[2 * pair], SAFE_PRIMES_1024[2 * pair + 1]
    public, shares = _deal(p, q, parties, threshold)
    return public, tuple(shares)
