"""Whether a feature file on disk can be reused: complete, sound, and computed from the same
inputs (its identity attrs) as the file this run would write."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from affectpipe.extract.plan import ManifestView, Target

logger = logging.getLogger("affectpipe.extract")

# Attrs that say what a file was computed from; a complete file is reused only if they match.
IDENTITY_KEYS = (
    "backbone",
    "manifest_fingerprint",
    "package_version",
    "weights_sha256",
    "preprocessing",
    "precision",
    "random_init",
    "descriptor",
    "train_images",
    "openface_dir",
    "shard",
    "shard_rows",
    "spatial_grid",
)
# Identity keys of optional parts: a run that does not ask for the part keeps the file's.
OPTIONAL_KEYS = ("spatial_grid",)


def existing_identity(path: Path) -> dict[str, Any] | None:
    """Identity attrs of a complete file at `path`, or None if absent/incomplete/unreadable."""
    import h5py

    from affectpipe.features import decode_attrs

    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as handle:
            attrs = decode_attrs(handle.attrs)
    except Exception as exc:  # a damaged file of any kind is rebuilt, never trusted
        logger.warning("%s is unreadable (%s): rebuilding it", path, exc)
        return None
    return attrs if attrs.get("complete") else None


def non_finite_ok_rows(path: Path) -> int:
    """Rows marked ok whose features hold NaN or inf (never written so: the file is damaged)."""
    import h5py

    from affectpipe.extract.store import H5_CHUNK_ROWS
    from affectpipe.features import FLOAT_PARTS

    bad = 0
    with h5py.File(path, "r") as handle:
        ok = handle["ok"][...].astype(bool)
        for start in range(0, len(ok), H5_CHUNK_ROWS):
            block = slice(start, start + H5_CHUNK_ROWS)
            finite = np.ones(len(ok[block]), dtype=bool)
            for name in FLOAT_PARTS:
                if name in handle:
                    finite &= np.isfinite(handle[name][block]).all(axis=1)
            bad += int((ok[block] & ~finite).sum())
    return bad


def is_current(target: Target) -> dict[str, Any] | None:
    """The existing file's attrs when it is complete, sound and computed from the same inputs.

    A file with an optional part (`OPTIONAL_KEYS`) the run does not ask for is current: the
    run adopts the part (its target's identity takes the file's key), so a plain rerun, or
    a --retry-failed, keeps it rather than recomputing the file without it."""
    attrs = existing_identity(target.path)
    if attrs is None:
        return None
    wanted = dict(target.identity)
    for key in OPTIONAL_KEYS:
        if key not in wanted and attrs.get(key) is not None:
            wanted[key] = attrs[key]
    changed = [k for k in IDENTITY_KEYS if attrs.get(k) != wanted.get(k)]
    if changed:
        logger.warning("%s is stale (changed: %s): recomputing", target.path, ", ".join(changed))
        return None
    try:
        bad = non_finite_ok_rows(target.path)
    except Exception as exc:
        logger.warning("%s is unreadable (%s): rebuilding it", target.path, exc)
        return None
    if bad:
        logger.warning("%s has %d rows of NaN/inf features: rebuilding it", target.path, bad)
        return None
    target.identity = wanted
    return attrs


def retry_rows(target: Target, view: ManifestView, rows: tuple[int, int]) -> np.ndarray:
    """Rows of the complete file to re-attempt: ok false, and an image file to read."""
    import h5py

    with h5py.File(target.path, "r") as handle:
        failed = np.flatnonzero(~handle["ok"][...].astype(bool))
    return np.array([r for r in failed if view.paths[rows[0] + r] is not None], dtype=np.int64)
