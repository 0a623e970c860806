"""`index_dataset`: read a dataset with one of the formats and write its manifest.

The manifest's provenance holds a fingerprint of everything that went into it (format,
options, every source file's sha256, the set of image files under each root, package
version); indexing again with an unchanged fingerprint reuses the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectpipe import __version__
from affectpipe.config import DatasetPaths, checked_name
from affectpipe.data.dataset import Inputs, Table, TestList
from affectpipe.data.formats import get_format
from affectpipe.data.images import keys_digest, list_images
from affectpipe.data.options import IndexOptions
from affectpipe.data.records import check_regular_file
from affectpipe.data.summary import summarize
from affectpipe.errors import InputError
from affectpipe.fsutil import file_lock, json_sha256, sha256_file
from affectpipe.manifest import (
    conform,
    empty_manifest,
    read_manifest,
    read_manifest_metadata,
    write_manifest,
)
from affectpipe.schema import AU_COLUMNS, VA_COLUMNS


@dataclass(frozen=True)
class IndexResult:
    manifest_path: Path
    rows: int
    reused: bool
    summary: str


def index_dataset(
    root: Path,
    fmt: str,
    name: str,
    cache_dir: Path,
    *,
    lenient: bool = IndexOptions.lenient,
    force: bool = IndexOptions.force,
    **format_options: Any,
) -> IndexResult:
    """Index the dataset at `root` in layout `fmt` into `<cache_dir>/<name>/manifest.parquet`.

    `format_options` are the format's own options (e.g. `train_file`, `image_root`: those of
    `IndexOptions`, or a plugin format's); None values mean "use the default". Raises
    InputError (or AnnotationError, naming file and line) on bad input, and then writes
    nothing.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise InputError(f"dataset root not found: {root}")
    checked_name("dataset", name)
    layout = get_format(fmt)
    options = {k: v for k, v in format_options.items() if v is not None}
    unknown = sorted(set(options) - set(layout.option_names))
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise InputError(f"{flags} does not apply to --format {layout.name}")
    paths = DatasetPaths.of(cache_dir, name)
    if getattr(layout, "writes_images", False):  # `videos`: its frames go into the cache
        options.setdefault("frames_dir", paths.root / "frames")
    inputs = layout.resolve(root, **options)
    for source in inputs.sources:  # before hashing: a FIFO would block, a folder would crash
        check_regular_file(source)

    images = {r: list_images(r) for r in sorted(set(inputs.image_roots.values()))}
    metadata = _provenance(name, layout.name, inputs, options, lenient, images)
    if not force and _unchanged(paths.manifest, metadata["fingerprint"]):
        frame = read_manifest(paths.manifest)
        stored = read_manifest_metadata(paths.manifest)
        text = f"{paths.manifest} is up to date: inputs unchanged, nothing re-indexed"
        return IndexResult(paths.manifest, len(frame), True, f"{text}\n{summarize(frame, stored)}")
    # Parse before touching the cache: a bad file leaves nothing behind.
    table = layout.read(inputs, images, lenient=lenient)
    frame = _finish(table, inputs, images)
    metadata["test_list"] = _test_list_metadata(table.test_list, metadata["sources"])
    if table.test_lists:
        metadata["test_lists"] = {
            task: _test_list_metadata(listed, metadata["sources"])
            for task, listed in table.test_lists.items()
        }
    metadata["lenient_fixes"] = table.fixes
    with file_lock(paths.lock):
        write_manifest(frame, paths.manifest, metadata)
    text = f"wrote {paths.manifest}: {len(frame)} rows"
    return IndexResult(paths.manifest, len(frame), False, f"{text}\n{summarize(frame, metadata)}")


def _provenance(
    name: str,
    fmt: str,
    inputs: Inputs,
    options: dict[str, Any],
    lenient: bool,
    images: dict[Path, frozenset[str]],
) -> dict[str, Any]:
    recorded = {k: str(v) for k, v in options.items()}
    recorded.update(inputs.options)
    recorded["lenient"] = lenient
    sources = [{"path": str(p), "sha256": sha256_file(p)} for p in inputs.sources]
    image_sets = {str(r): {"files": len(k), "digest": keys_digest(k)} for r, k in images.items()}
    identity = {
        "format": fmt,
        "options": recorded,
        "sources": sources,
        "images": image_sets,
        "image_roots": {s: str(p) for s, p in inputs.image_roots.items()},
        "package_version": __version__,
    }
    fingerprint = json_sha256(identity)
    return {"dataset": name, **identity, "fingerprint": fingerprint}


def _unchanged(manifest: Path, fingerprint: str) -> bool:
    if not manifest.exists():
        return False
    try:
        return read_manifest_metadata(manifest).get("fingerprint") == fingerprint
    except (OSError, ValueError):  # an unreadable manifest is simply rebuilt
        return False


def _finish(table: Table, inputs: Inputs, images: dict[Path, frozenset[str]]) -> pd.DataFrame:
    """Add what the format left out (`video`: each image its own; `frame`: list order within
    its video; `has_image`), order columns, apply the contract dtypes."""
    frame = table.frame
    if "video" not in frame:
        frame["video"] = frame["image"]
    if "frame" not in frame:
        frame["frame"] = frame.groupby("video", sort=False).cumcount() + 1
    absent = [c for c in (*VA_COLUMNS, "expression", *AU_COLUMNS) if c not in frame]
    if absent:  # labels it does not have: missing, as in an empty manifest
        blank = empty_manifest(len(frame))
        for column in absent:
            frame[column] = blank[column].to_numpy()
    if "has_image" not in frame:
        has_image = np.zeros(len(frame), dtype=bool)
        for split, root in inputs.image_roots.items():
            rows = (frame["split"] == split).to_numpy()
            present = images.get(root, frozenset())
            has_image[rows] = frame["image"][rows].isin(present).to_numpy()
        frame["has_image"] = has_image
    test = (frame["split"] == "test").to_numpy()
    if test.any():  # the contract: test rows carry no labels
        frame.loc[test, list(VA_COLUMNS)] = np.nan
        frame.loc[test, ["expression", *AU_COLUMNS]] = -1
    return conform(frame)


def _test_list_metadata(
    listed: TestList | None, sources: list[dict[str, str]]
) -> dict[str, Any] | None:
    if listed is None:
        return None
    sha = next(s["sha256"] for s in sources if s["path"] == str(listed.path))
    entry = {
        "path": str(listed.path),
        "sha256": sha,
        "style": listed.style,
        "header": listed.header,
        "trailing_comma": listed.trailing_comma,
    }
    if listed.rows is not None:
        entry["rows"] = list(listed.rows)
    return entry
