"""Which image files exist under an image root (keys relative to the root, `/`-separated)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

# Image files every stage reads (PIL decodes them all): what `index` lists, `predict` takes
# from a folder and `bench extract` times.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


def list_images(root: Path) -> frozenset[str]:
    """Every image file below `root`, as relative keys like `video45_1/00001.jpg`."""
    keys: list[str] = []
    root = Path(root)
    for folder, _dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        keys.extend(prefix + f for f in files if f.lower().endswith(IMAGE_SUFFIXES))
    return frozenset(keys)


def keys_digest(keys: Iterable[str]) -> str:
    """A fingerprint of a set of image keys (changes when a file appears or disappears)."""
    digest = hashlib.sha256()
    for key in sorted(keys):
        digest.update(key.encode())
        digest.update(b"\n")
    return digest.hexdigest()
