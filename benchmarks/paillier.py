"""Benchmark Paillier secure aggregation: per-ciphertext cost, packing gain, and a secure round.

Run ``python benchmarks/paillier.py`` (``--quick``: 10,000 values per node). Everything is measured
in one run, on one 2048-bit key, as CPU seconds of this process (``time.process_time``, garbage
collector off), so other load on a shared machine does not count. Three tables:

1. **Per ciphertext**, against the bare gmpy2 operation of the same size in the same run: encryption
   against one ``powmod(r, n, n^2)``; CRT decryption against the two ``powmod(c, p - 1, p^2)``,
   ``powmod(c, q - 1, q^2)`` it needs; a threshold partial decryption against one ``powmod(c, e, n^2)``
   with an exponent as long as ``2 Delta s_i``. Target: encryption and decryption within 1.2x of
   their baseline. phe's ``raw_encrypt``/``raw_decrypt`` on the same key for comparison.
2. **Per value**, with the packing gain shown apart: phe encodes each value on its own at
   ``precision=2**-20`` (our resolution: one exponent for all values, so additions never rescale),
   ours packs 55 values (20 fractional bits, ``|v| <= 256``, up to 255 contributions) into one
   ciphertext. ratio = per-ciphertext speed ratio x values per ciphertext.
3. **A secure round against a plain round** of the same analysis, ``--nodes`` (10) x ``--length``
   (100,000) values: the plain round encodes each node's vector (flame.codec), decodes and sums
   them; the secure round encrypts (fast variant), commits, adds, has each decryptor check the
   request and decrypt its part with its proof, combines ``t`` parts and decodes. Nodes and
   decryptors work in parallel on their own machines, so the round's time is the critical path: one
   node's work + the aggregator's + one decryptor's + the combination. Target: at most 3x. Messaging
   is left out of both (the same messages travel in both modes, plus the decryption request and
   answers in secure mode), so the plain round here is its computation only, a few milliseconds.

The script reports; it always exits 0. Dealing the threshold key (safe primes) is timed apart: it
happens once per analysis.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import platform
import secrets
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import gmpy2  # type: ignore[import-untyped]
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flame.codec import decode, encode
from flame.federated.decryptor import Decryptor, DecryptRequest, commitment, context
from flame.protocols import paillier
from flame.protocols.paillier import DEFAULT_LAYOUT, _decrypt, _encrypt
from flame.protocols.threshold_paillier import (
    combine,
    combine_vector,
    deal,
    default_threshold,
    partial_decrypt,
)

T = TypeVar("T")
ANALYSIS = "benchmark"


def cpu_timed(fn: Callable[[], T]) -> tuple[T, float]:
    """The result of ``fn()`` and the CPU seconds it took, with the garbage collector off."""
    gc.collect()
    gc.disable()
    try:
        start = time.process_time()
        result = fn()
        elapsed = time.process_time() - start
    finally:
        gc.enable()
    return result, elapsed


def per_op(fn: Callable[[], object], count: int) -> float:
    """CPU seconds per call of ``fn``, over ``count`` calls."""
    _, t = cpu_timed(lambda: [fn() for _ in range(count)])
    return t / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--length", type=int, default=100_000, help="values per node (default 100,000)")
    parser.add_argument("--count", type=int, default=60, help="ciphertexts per per-ciphertext figure")
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="10,000 values per node")
    parser.add_argument("--no-phe", action="store_true", help="skip phe")
    args = parser.parse_args()
    length = 10_000 if args.quick else args.length
    wall = time.perf_counter()
    print(
        f"python {platform.python_version()}, gmpy2 {gmpy2.version()}, {gmpy2.mp_version()}, "
        f"{os.cpu_count()} CPUs (one used); CPU time of this process; {args.key_bits}-bit key"
    )
    threshold = default_threshold(args.nodes)
    (public, shares), t_deal = cpu_timed(lambda: deal(args.nodes, threshold, args.key_bits))
    print(
        f"dealt a {threshold}-of-{args.nodes} threshold key in {t_deal:.1f} s CPU (safe primes; once per analysis)"
    )
    key = public.public_key
    n, nsq = key._n, key._nsq
    count = args.count

    # -- 1. per ciphertext --------------------------------------------------------------------------------
    # a single-key private key on the same modulus, for the CRT decryption figure (primes from a fresh
    # ordinary key pair of the same size: the dealer's primes are gone)
    single_public, single = paillier.generate_keypair(args.key_bits)
    sp, sq = single._p, single._q
    sn, snsq = single_public._n, single_public._nsq
    m = secrets.randbelow(int(sn))
    ct = _encrypt(single_public, m)
    rows: list[tuple[str, float, float, str]] = []
    base_enc = per_op(lambda: gmpy2.powmod(paillier._random_unit(sn), sn, snsq), count)
    ours_enc = per_op(lambda: _encrypt(single_public, m), count)
    single_public._fixed_base_table()
    ours_fast = per_op(lambda: _encrypt(single_public, m, fast=True), count)
    base_dec = per_op(lambda: (gmpy2.powmod(ct, sp - 1, sp * sp), gmpy2.powmod(ct, sq - 1, sq * sq)), count)
    ours_dec = per_op(lambda: _decrypt(single, ct), count)
    rows += [
        ("encrypt", ours_enc, base_enc, "powmod(r, n, n^2)"),
        ("encrypt (fast)", ours_fast, base_enc, "powmod(r, n, n^2)"),
        ("decrypt (CRT)", ours_dec, base_dec, "2 powmods mod p^2, q^2"),
    ]
    tct = _encrypt(key, m)
    exponent = 2 * public.delta * shares[0]._s
    base_part = per_op(lambda: gmpy2.powmod(tct, exponent, nsq), max(10, count // 4))
    k = max(10, count // 4)
    cts = [_encrypt(key, secrets.randbelow(int(n))) for _ in range(k)]
    _, t_part = cpu_timed(lambda: partial_decrypt(shares[0], cts, b"bench"))
    parts = [partial_decrypt(s, cts, b"bench") for s in shares[:threshold]]
    _, t_comb = cpu_timed(lambda: combine(public, cts, parts, b"bench"))
    rows += [
        (f"partial decrypt (+proof/{k})", t_part / k, base_part, f"powmod, {exponent.bit_length()}-bit exp."),
        (f"combine {threshold} parts (+verify)", t_comb / k, base_part, "same"),
    ]
    phe_rows: dict[str, float] = {}
    if not args.no_phe:
        try:
            import phe  # type: ignore[import-untyped]
        except ImportError:
            print("phe is not installed: no phe figures")
        else:
            phe_public = phe.PaillierPublicKey(single_public.n)
            phe_private = phe.PaillierPrivateKey(phe_public, single.p, single.q)
            phe_rows["encrypt"] = per_op(lambda: phe_public.raw_encrypt(m), count)
            phe_rows["decrypt (CRT)"] = per_op(lambda: phe_private.raw_decrypt(int(ct)), count)
    print("\n1. per ciphertext (ms CPU)")
    header = f"{'operation':<34} {'ours':>9} {'baseline':>9} {'ratio':>7}  {'baseline is':<28} {'phe':>8}"
    print(header)
    print("-" * len(header))
    for name, ours, base, what in rows:
        ratio = ours / base
        mark = (
            ""
            if name.startswith(("partial", "combine", "encrypt (fast)"))
            else (" ok" if ratio <= 1.2 else " >1.2x")
        )
        phe_ms = f"{1e3 * phe_rows[name]:8.2f}" if name in phe_rows else f"{'-':>8}"
        print(f"{name:<34} {1e3 * ours:9.2f} {1e3 * base:9.2f} {ratio:6.2f}x{mark:<6} {what:<28} {phe_ms}")

    # -- 2. per value: packing gain apart ------------------------------------------------------------------
    slots = DEFAULT_LAYOUT.slots_per_plaintext(args.key_bits)
    print(f"\n2. per value: {slots} values per ciphertext (packing gain {slots}x); phe at precision=2**-20")
    if phe_rows:
        sample = np.random.default_rng(0).uniform(-100, 100, count).tolist()
        phe_pub = phe.PaillierPublicKey(single_public.n)
        phe_priv = phe.PaillierPrivateKey(phe_pub, single.p, single.q)
        enc, t = cpu_timed(lambda: [phe_pub.encrypt(v, precision=2**-20) for v in sample])
        phe_val_enc = t / count
        assert len({e.exponent for e in enc}) == 1
        _, t = cpu_timed(lambda: [a + b for a, b in itertools.pairwise(enc)])
        phe_val_add = t / (count - 1)
        _, t = cpu_timed(lambda: [phe_priv.decrypt(e) for e in enc])
        phe_val_dec = t / count
        ours_vec = paillier.encrypt(single_public, np.array(sample * 20))
        _, t = cpu_timed(lambda: paillier.aggregate([ours_vec, ours_vec]))
        ours_val_add = t / ours_vec.length
        header = (
            f"{'per value':<12} {'ours us':>10} {'phe us':>10} {'ratio':>9} {'= per ct':>9} {'x packing':>10}"
        )
        print(header)
        print("-" * len(header))
        for name, ours_ct, phe_v in (
            ("encrypt", ours_enc, phe_val_enc),
            ("encrypt fast", ours_fast, phe_val_enc),
            ("add", ours_val_add * slots, phe_val_add),
            ("decrypt", ours_dec, phe_val_dec),
        ):
            ours_v = ours_ct / slots
            print(
                f"{name:<12} {1e6 * ours_v:10.2f} {1e6 * phe_v:10.1f} {phe_v / ours_v:8.1f}x "
                f"{phe_v / ours_ct:8.2f}x {slots:9d}x"
            )

    # -- 3. a secure round against a plain round -------------------------------------------------------------
    nodes = [f"node-{i + 1:02d}" for i in range(args.nodes)]
    data = np.random.default_rng(1).uniform(-100.0, 100.0, (args.nodes, length))
    print(f"\n3. one round, {args.nodes} nodes x {length:,} values, {threshold}-of-{args.nodes} decryption")

    def plain_node(i: int) -> bytes:
        return encode({"x": data[i]})

    plain_blobs, t_plain_node = cpu_timed(lambda: [plain_node(i) for i in range(args.nodes)])
    plain_sum, t_plain_agg = cpu_timed(lambda: sum(decode(b)["x"] for b in plain_blobs))
    plain_path = t_plain_node / args.nodes + t_plain_agg

    key._fixed_base_table()

    def secure_node(i: int) -> tuple[bytes, bytes]:
        blob = paillier.encrypt(key, data[i], fast=True).to_bytes()
        return blob, commitment(ANALYSIS, 1, "x", nodes[i], blob)

    made, t_sec_nodes = cpu_timed(lambda: [secure_node(i) for i in range(args.nodes)])
    blobs = {nodes[i]: made[i][0] for i in range(args.nodes)}
    decryptors = [Decryptor(s, ANALYSIS, nodes, "aggregator", args.nodes) for s in shares[:threshold]]
    for d in decryptors:
        for i, node in enumerate(nodes):
            d.receive_commitment(
                node,
                {"analysis_id": ANALYSIS, "round": 1, "field": "x", "node": node, "commitment": made[i][1]},
            )
    request = DecryptRequest(ANALYSIS, 1, "x", blobs)
    total, t_sec_agg = cpu_timed(
        lambda: paillier.aggregate([paillier.EncryptedVector.from_bytes(b, key) for b in blobs.values()])
    )
    _, t_check = cpu_timed(lambda: decryptors[0].check(request))
    partials = []
    t_dec = []
    for d in decryptors:
        partial, t = cpu_timed(lambda d=d: d.decrypt(request))  # type: ignore[misc]
        partials.append(partial)
        t_dec.append(t)
    ctx = context(ANALYSIS, 1, "x", nodes)
    result, t_combine = cpu_timed(lambda: combine_vector(public, total, partials, ctx))
    error = float(np.max(np.abs(result - plain_sum)))
    secure_path = t_sec_nodes / args.nodes + t_sec_agg + max(t_dec) + t_combine
    print(f"{'step':<48} {'s CPU':>9}")
    print("-" * 58)
    for name, t in (
        ("plain: one node encodes its update", t_plain_node / args.nodes),
        ("plain: aggregator decodes and sums", t_plain_agg),
        ("plain round (critical path)", plain_path),
        ("secure: one node encrypts (fast) and commits", t_sec_nodes / args.nodes),
        ("secure: aggregator parses and adds", t_sec_agg),
        ("secure: one decryptor checks the request", t_check),
        ("secure: one decryptor checks + partial decryption + proof", max(t_dec)),
        (f"secure: combination of {threshold} parts (proofs verified) + decode", t_combine),
        ("secure round (critical path)", secure_path),
    ):
        print(f"{name:<58} {t:9.2f}")
    factor = secure_path / plain_path
    print(
        f"overhead factor secure / plain: {factor:,.0f}x (target 3x: {'met' if factor <= 3 else 'NOT met'}); "
        f"{len(total.ciphertexts):,} ciphertexts in the sum; max |error| {error:.2g}"
    )
    print(
        f"total CPU of the secure round on all machines: {t_sec_nodes + t_sec_agg + sum(t_dec) + t_combine:.1f} s"
    )
    print(f"\nwall time {time.perf_counter() - wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
