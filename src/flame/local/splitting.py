"""Data for a local federation: one file split across the nodes, and the node folders of a data root."""

from __future__ import annotations

from pathlib import Path

from flame.local.config import SimUsageError, count_node_folders


def split_into(root: Path, source: Path, nodes: int, seed: int) -> list[int]:
    """Split one CSV or FHIR file across ``node-1`` ... ``node-N`` under ``root``; returns the part sizes.

    A CSV goes to ``node-i/s3/<name>.csv`` (a patient's rows together when it has a ``patient_id``
    column), a FHIR Bundle (``.json``) or NDJSON file to ``node-i/fhir/bundle.json``.
    """
    from flame.sim import synthetic

    if not source.is_file():
        raise SimUsageError(f"--split {source}: no such file")
    suffix = source.suffix.lower()
    sizes: list[int] = []
    if suffix == ".csv":
        for i, frame in enumerate(synthetic.split_csv(source, nodes, seed), 1):
            target = root / f"node-{i}" / "s3" / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(target, index=False, lineterminator="\n")
            sizes.append(len(frame))
    elif suffix in (".json", ".ndjson"):
        for i, resources in enumerate(synthetic.split_fhir_bundle(source, nodes, seed), 1):
            target = root / f"node-{i}" / "fhir" / "bundle.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(synthetic.dump_bundle(resources), encoding="utf-8")
            sizes.append(len(resources))
    else:
        raise SimUsageError(f"--split {source}: give a .csv file, a FHIR Bundle (.json) or NDJSON (.ndjson)")
    return sizes


__all__ = ["count_node_folders", "split_into"]
