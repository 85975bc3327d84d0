"""Sample data for a local federation: ``data/node-1`` ... ``data/node-N``, a small CSV on each.

Each node gets ``data/node-i/s3/data.csv`` (its S3 data source under ``flame sim --data data``) with the
columns ``patient_id``, ``age`` and ``bmi``: synthetic values, no real patients. The same ``seed``
always gives the same files. Regenerate with ``python make_data_generic.py --nodes 3 --seed 0``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

#: Rows on node 1, 2, 3, ... (repeated for more nodes): sites of different sizes.
ROWS = (40, 55, 70)


def write_sample_data(root: Path | str = "data", nodes: int = 3, seed: int = 0) -> list[Path]:
    """Write ``root/node-i/s3/data.csv`` for ``i`` in 1..nodes; returns the files written."""
    if nodes < 1:
        raise ValueError(f"nodes must be at least 1, not {nodes}")
    written = []
    for i in range(1, nodes + 1):
        rng = np.random.default_rng([seed, i])
        rows = ROWS[(i - 1) % len(ROWS)]
        # sites differ: each has its own age distribution
        ages = np.clip(np.rint(rng.normal(42 + 5 * i, 14, rows)), 18, 95).astype(int)
        bmi = np.clip(rng.normal(26.5 + 0.05 * (ages - 50), 4.0), 16, 50)
        lines = ["patient_id,age,bmi"]
        lines += [f"n{i}-{j:04d},{a},{b:.1f}" for j, (a, b) in enumerate(zip(ages, bmi, strict=True), 1)]
        path = Path(root) / f"node-{i}" / "s3" / "data.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the sample data of a local federation.")
    parser.add_argument("--root", default="data", help="folder of the node folders (data)")
    parser.add_argument("--nodes", type=int, default=3, help="number of nodes (3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the values (0)")
    args = parser.parse_args()
    for path in write_sample_data(args.root, args.nodes, args.seed):
        print(path)


if __name__ == "__main__":
    main()
