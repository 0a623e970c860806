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
    from affectpipe.features import read_header

    if not path.exists():
        return None
    try:
        attrs = read_header(path)
    except Exception as exc:  # a damaged file of any kind is rebuilt, never trusted
        logger.warning("%s is unreadable (%s): rebuilding it", path, exc)
        return None
    return attrs if attrs.get("complete") else None


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
        from affectpipe.features import non_finite_ok_rows

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
    from affectpipe.features import ok_mask

    failed = np.flatnonzero(~ok_mask(target.path))
    return np.array([r for r in failed if view.paths[rows[0] + r] is not None], dtype=np.int64)
