"""Benchmark flame.protocols.paillier against python-paillier (phe) with gmpy2.

Run ``python benchmarks/paillier.py`` (``--quick``: 10,000 values per party). In one run, with a
2048-bit key, each of ``--parties`` (10) parties encrypts a ``--length`` (100,000) element float
vector drawn uniformly from [-100, 100]; the aggregator adds the 10 encrypted vectors; the key holder
decrypts the sum. Our implementation uses the default layout (20 fractional bits, values within
±256, up to 255 contributions: 55 values per ciphertext) in its textbook and fast variants.

Figures are values per second of CPU time of this process (``time.process_time``, garbage collector
off), i.e. per core, and so unaffected by other load on a shared machine:

* encrypt: values encrypted per second (all parties' vectors);
* aggregate: input values summed per second (10 x 100,000 values per aggregation, best of 3);
* decrypt: values of the sum decrypted per second;
* bytes per value: the serialised encrypted vector (``EncryptedVector.to_bytes``) over its length;
  for phe one ciphertext as fixed-width binary (512 bytes) plus a 1-byte exponent, the least phe
  needs (its documented JSON form, decimal text, is about 1,240 bytes).

phe encrypts, adds and decrypts value by value; it runs on a sample of ``--phe-sample`` (300) values
per party, and its rates are those of the sample (rates do not depend on the vector length): the
table says so. Both libraries use the same modulus. Targets (ratio ours / phe on one core): encrypt
>= 60 (fast variant >= 500), aggregate >= 250, decrypt >= 55, and at most 10 bytes per value. The
script reports; it always exits 0.
"""

from __future__ import annotations

import argparse
import functools
import gc
import operator
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import gmpy2  # type: ignore[import-untyped]
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from flame.codec import encode
from flame.protocols.paillier import DEFAULT_LAYOUT, Layout, aggregate, decrypt, encrypt, generate_keypair

T = TypeVar("T")

# for information: a layout with 33-bit slots (62 per 2048-bit plaintext), measured on one party
COMPACT = Layout(frac_bits=18, bound=128, max_contributors=127)
TARGETS = {"encrypt": 60.0, "encrypt (fast)": 500.0, "aggregate": 250.0, "decrypt": 55.0}
BYTES_TARGET = 10.0


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parties", type=int, default=10)
    parser.add_argument("--length", type=int, default=100_000, help="values per party (default 100,000)")
    parser.add_argument("--phe-sample", type=int, default=300, help="values per party phe runs on")
    parser.add_argument("--key-bits", type=int, default=2048)
    parser.add_argument("--quick", action="store_true", help="10,000 values per party")
    parser.add_argument("--no-phe", action="store_true", help="skip phe (no ratios)")
    parser.add_argument("--no-compact", action="store_true", help="skip the informational compact layout")
    args = parser.parse_args()
    length = 10_000 if args.quick else args.length
    parties, sample = args.parties, min(args.phe_sample, length)
    wall = time.perf_counter()

    print(
        f"flame.protocols.paillier vs phe: {parties} parties x {length:,} values, {args.key_bits}-bit key, "
        f"layout {DEFAULT_LAYOUT}"
    )
    print(
        f"python {platform.python_version()}, gmpy2 {gmpy2.version()}, {gmpy2.mp_version()}, "
        f"{os.cpu_count()} CPUs (one used); CPU time of this process"
    )
    public, private = generate_keypair(args.key_bits)
    data = np.random.default_rng(0).uniform(-100.0, 100.0, (parties, length))
    values = parties * length

    ours: dict[str, float] = {}
    textbook, t = cpu_timed(lambda: [encrypt(public, row) for row in data])
    ours["encrypt"] = values / t
    _, t_table = cpu_timed(public._fixed_base_table)  # once per key and process
    fast, t = cpu_timed(lambda: [encrypt(public, row, fast=True) for row in data])
    ours["encrypt (fast)"] = values / t
    t = min(cpu_timed(lambda: aggregate(textbook))[1] for _ in range(3))
    ours["aggregate"] = values / t
    total = aggregate(textbook)
    result, t = cpu_timed(lambda: decrypt(private, total))
    ours["decrypt"] = length / t
    error = float(np.max(np.abs(result - data.sum(axis=0))))
    fast_error = float(np.max(np.abs(decrypt(private, aggregate(fast)) - data.sum(axis=0))))
    wire = len(textbook[0].to_bytes()) / length
    codec_wire = len(encode(textbook[0].to_payload())) / length
    slots = textbook[0].slots
    print(
        f"ours: {slots} values per ciphertext, {len(textbook[0].ciphertexts):,} ciphertexts per party; "
        f"fast-base table built in {t_table:.2f} s (once per key); max |error| of the sum {error:.2g} "
        f"(textbook), {fast_error:.2g} (fast), bound {parties * 2.0 ** -(DEFAULT_LAYOUT.frac_bits + 1):.2g}"
    )

    theirs: dict[str, float] = {}
    if not args.no_phe:
        try:
            from phe import (  # type: ignore[import-untyped]
                EncryptedNumber,
                PaillierPrivateKey,
                PaillierPublicKey,
            )
            from phe import util as phe_util
        except ImportError:
            print("phe is not installed (pip install phe): no ratios")
        else:
            print(f"phe: gmpy2 in use: {phe_util.HAVE_GMP}; sample of {sample} values per party")
            phe_public = PaillierPublicKey(public.n)
            phe_private = PaillierPrivateKey(phe_public, private.p, private.q)
            rows = data[:, :sample].tolist()
            encrypted, t = cpu_timed(lambda: [[phe_public.encrypt(v) for v in row] for row in rows])
            theirs["encrypt"] = theirs["encrypt (fast)"] = parties * sample / t

            def phe_sum() -> list[EncryptedNumber]:
                return [functools.reduce(operator.add, column) for column in zip(*encrypted, strict=True)]

            t = min(cpu_timed(phe_sum)[1] for _ in range(3))
            theirs["aggregate"] = parties * sample / t
            sums = phe_sum()
            decrypted, t = cpu_timed(lambda: [phe_private.decrypt(x) for x in sums])
            theirs["decrypt"] = sample / t
            phe_error = float(np.max(np.abs(np.array(decrypted) - data[:, :sample].sum(axis=0))))
            print(f"phe: max |error| of the sum {phe_error:.2g}; rates scaled from the sample")

    print()
    header = f"{'operation':<16} {'ours values/s':>15} {'phe values/s':>14} {'ratio':>9} {'target':>8}  met"
    print(header)
    print("-" * len(header))
    for name, rate in ours.items():
        if name in theirs:
            ratio = rate / theirs[name]
            met = "yes" if ratio >= TARGETS[name] else f"NO (by {100 * (1 - ratio / TARGETS[name]):.1f} %)"
            print(
                f"{name:<16} {rate:15,.0f} {theirs[name]:14,.1f} {ratio:8.1f}x {TARGETS[name]:7.0f}x  {met}"
            )
        else:
            print(f"{name:<16} {rate:15,.0f} {'-':>14} {'-':>9} {TARGETS[name]:7.0f}x  -")
    met = "yes" if wire <= BYTES_TARGET else "NO"
    print(f"{'bytes/value':<16} {wire:15.2f} {513:14.1f} {513 / wire:8.0f}x {'<= 10 B':>8}  {met}")
    print(f"(bytes/value as a flame.codec payload: {codec_wire:.2f})")
    if not args.no_compact:
        one, t = cpu_timed(lambda: encrypt(public, data[0], COMPACT))
        enc_rate = length / t
        _, t = cpu_timed(lambda: decrypt(private, one))
        dec_rate, compact_wire = length / t, len(one.to_bytes()) / length
        print(f"\nfor information, one party with {COMPACT} ({one.slots} values per ciphertext):")
        if theirs:
            enc_ratio, dec_ratio = enc_rate / theirs["encrypt"], dec_rate / theirs["decrypt"]
            print(
                f"encrypt {enc_rate:,.0f} values/s ({enc_ratio:.1f}x phe), decrypt {dec_rate:,.0f} values/s "
                f"({dec_ratio:.1f}x phe), {compact_wire:.2f} bytes/value"
            )
        else:
            print(
                f"encrypt {enc_rate:,.0f} values/s, decrypt {dec_rate:,.0f} values/s, {compact_wire:.2f} B/value"
            )
    print(f"\nwall time {time.perf_counter() - wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
