"""The manifest contract: one row per annotated or listed frame, in a fixed order.

Columns and dtypes are `affectpipe.schema.MANIFEST_DTYPES`; provenance lives in the Parquet
key-value metadata under the key ``affectpipe`` (a JSON object). Image keys may repeat;
feature files hold one row per *distinct* image, in first-occurrence order
(`distinct_images`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from affectpipe.errors import InputError
from affectpipe.fsutil import atomic_path
from affectpipe.schema import MANIFEST_COLUMNS, MANIFEST_DTYPES

METADATA_KEY = b"affectpipe"


def empty_manifest(n: int = 0) -> pd.DataFrame:
    """A manifest of `n` rows with every label missing (NaN / -1) and no images."""
    frame = pd.DataFrame(
        {
            "image": pd.array([""] * n, dtype="string"),
            "video": pd.array([""] * n, dtype="string"),
            "frame": np.zeros(n, dtype=np.int64),
            "split": pd.array(["train"] * n, dtype="string"),
            "has_image": np.zeros(n, dtype=bool),
        }
    )
    for column, dtype in MANIFEST_DTYPES.items():
        if column not in frame:
            missing = np.nan if dtype.startswith("float") else -1
            frame[column] = np.full(n, missing, dtype=dtype)
    return frame[list(MANIFEST_COLUMNS)]


class CorruptManifest(InputError, ValueError):
    """An unreadable or malformed manifest file. Also a ValueError, so that `index`, which
    simply rebuilds a manifest it cannot read, keeps catching it."""

    def __init__(self, path: Path, why: str):
        super().__init__(
            f"{path} is not a readable manifest ({why}): rebuild it with "
            f"`pipeline index ROOT --format FORMAT --name {path.parent.name} --force`"
        )


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Return `frame` with exactly the manifest columns, in order, with the contract dtypes."""
    missing = [c for c in MANIFEST_COLUMNS if c not in frame]
    if missing:
        raise InputError(f"manifest lacks columns {missing}")
    out = frame[list(MANIFEST_COLUMNS)].reset_index(drop=True).copy()
    for column, dtype in MANIFEST_DTYPES.items():
        out[column] = out[column].astype(dtype)
    return out


def write_manifest(frame: pd.DataFrame, path: str | Path, metadata: dict[str, Any]) -> None:
    """Write the manifest atomically with `metadata` (JSON-serialisable) as provenance."""
    table = pa.Table.from_pandas(conform(frame), preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), METADATA_KEY: json.dumps(metadata).encode()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and check a manifest; raises InputError naming the file when it is absent or wrong."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no manifest at {path}: run `pipeline index` first")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as exc:  # not Parquet, truncated
        raise CorruptManifest(path, str(exc)) from exc
    try:
        return conform(table.to_pandas())
    except (InputError, pa.ArrowException, ValueError, TypeError) as exc:  # columns, dtypes
        raise CorruptManifest(path, str(exc)) from exc


def read_manifest_metadata(path: str | Path) -> dict[str, Any]:
    """The provenance JSON of a manifest ({} when it has none)."""
    path = Path(path)
    try:
        raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
        metadata = json.loads(raw) if raw else {}
    except (pa.ArrowException, OSError, ValueError) as exc:  # JSONDecodeError: a ValueError
        raise CorruptManifest(path, str(exc)) from exc
    if not isinstance(metadata, dict):
        raise CorruptManifest(path, "its metadata is not a JSON object")
    return metadata


def distinct_images(frame: pd.DataFrame) -> np.ndarray:
    """Distinct image keys in first-occurrence order: the row order of every feature file."""
    return pd.unique(frame["image"].to_numpy(dtype=object)).astype(str)


def image_paths(frame: pd.DataFrame, metadata: dict[str, Any]) -> np.ndarray:
    """Absolute path of each row's image (object array; None where `has_image` is false).

    The manifest metadata's ``image_roots`` maps each split to its image root folder.
    """
    roots = metadata.get("image_roots", {})
    paths = np.empty(len(frame), dtype=object)
    for split, rows in frame.groupby("split", sort=False).indices.items():
        root = roots.get(split)
        if root is None:
            continue
        sub = frame.iloc[rows]
        for i, key, present in zip(rows, sub["image"], sub["has_image"], strict=True):
            paths[i] = str(Path(root) / key) if present else None
    return paths


def listed_test_rows(manifest: pd.DataFrame, metadata: Mapping[str, Any], task: str) -> np.ndarray:
    """Manifest rows of `task`'s test list, in list order (its own block with `test_lists`)."""
    test_lists = metadata.get("test_lists")
    if test_lists:
        entry = test_lists.get(task)
        return np.arange(*entry["rows"], dtype=np.int64) if entry else np.zeros(0, np.int64)
    return np.flatnonzero((manifest["split"] == "test").to_numpy())
