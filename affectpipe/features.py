"""The feature-file contract (``features/<backbone>.h5``), read and written in one place.

Layout:
    image      [N]    utf-8 strings: distinct image i of the manifest (first-occurrence order)
    embedding  [N, D] float32
    logits     [N, K] float32, only for backbones that have logits
    ok         [N]    bool: the image was decoded and processed (else zero features)
attrs:
    backbone, package_version, weights_sha256, preprocessing (JSON), logit_names (JSON list),
    abaw_expr_index (JSON list of 8 logit indices giving ABAW codes 0..7, null for a class the
    backbone does not predict; or absent),
    groups (JSON {name: [start, stop]}: named column ranges of `embedding`),
    committed_rows (int), complete (bool), plus any provenance the writer adds; the extraction
    engine adds failed_count and failed_images (JSON list of {image, reason}, capped), and
    shard files add shard ("i/n") and shard_rows (JSON [start, stop]).

Arrays a backbone needs to reproduce its features (e.g. the openface HOG PCA's mean and
components) are datasets under ``extra/``: `write_feature_file` puts every array-valued attr
there, and `FeatureFile.extra(name)` reads one back.

A file whose `complete` attr is false is a run in progress or an interrupted one: readers
refuse it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from affectpipe.errors import InputError
from affectpipe.fsutil import atomic_path

JSON_ATTRS = (
    "preprocessing",
    "logit_names",
    "abaw_expr_index",
    "groups",
    "failed_images",
    "shard_rows",
)
STRING_DTYPE = h5py.string_dtype(encoding="utf-8")


def decode_attrs(raw: h5py.AttributeManager) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, np.generic):
            value = value.item()
        if key in JSON_ATTRS and isinstance(value, str):
            value = json.loads(value)
        attrs[key] = value
    return attrs


def encode_attrs(target: h5py.AttributeManager, attrs: dict[str, Any]) -> None:
    for key, value in attrs.items():
        if key in JSON_ATTRS or isinstance(value, (dict, list, tuple)):
            value = json.dumps(value)
        if value is None:
            continue
        target[key] = value


@dataclass
class FeatureFile:
    """A complete feature file, opened for reading. Arrays are loaded on demand."""

    path: Path
    images: np.ndarray
    ok: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone(self) -> str:
        return str(self.attrs.get("backbone", self.path.stem))

    def parts(self) -> list[str]:
        """Selectable parts: `embedding`, `logits` (if present) and the named groups."""
        with h5py.File(self.path, "r") as handle:
            names = [name for name in ("embedding", "logits") if name in handle]
        return names + list(self.attrs.get("groups", {}))

    def load(self, part: str) -> np.ndarray:
        """Load `embedding`, `logits` or a named group of embedding columns as float32."""
        groups = self.attrs.get("groups", {})
        with h5py.File(self.path, "r") as handle:
            if part in ("embedding", "logits") and part in handle:
                return handle[part][...].astype(np.float32, copy=False)
            if part in groups:
                start, stop = groups[part]
                return handle["embedding"][:, start:stop].astype(np.float32, copy=False)
        raise InputError(f"{self.path}: no part {part!r}; available: {', '.join(self.parts())}")

    def extra(self, name: str) -> np.ndarray:
        """An array stored under ``extra/`` (see the module docstring)."""
        with h5py.File(self.path, "r") as handle:
            if f"extra/{name}" not in handle:
                raise InputError(f"{self.path}: no extra array {name!r}")
            return handle[f"extra/{name}"][...]


def read_feature_file(path: str | Path) -> FeatureFile:
    path = Path(path)
    if not path.exists():
        raise InputError(f"no feature file at {path}: run `pipeline extract` first")
    with h5py.File(path, "r") as handle:
        attrs = decode_attrs(handle.attrs)
        if not attrs.get("complete", False):
            raise InputError(
                f"{path} is incomplete ({attrs.get('committed_rows', 0)} of "
                f"{len(handle['image'])} rows): rerun `pipeline extract` to finish it"
            )
        images = handle["image"].asstr()[...]
        ok = handle["ok"][...].astype(bool)
    return FeatureFile(path=path, images=np.asarray(images, dtype=str), ok=ok, attrs=attrs)


def write_feature_file(
    path: str | Path,
    images: np.ndarray,
    embedding: np.ndarray,
    ok: np.ndarray,
    attrs: dict[str, Any],
    logits: np.ndarray | None = None,
) -> None:
    """Write a complete feature file in one go, atomically (for whole-array producers)."""
    n = len(images)
    if embedding.shape[0] != n or ok.shape[0] != n or (logits is not None and len(logits) != n):
        raise ValueError("images, embedding, logits and ok must have the same number of rows")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.create_dataset("image", data=np.asarray(images, dtype=object), dtype=STRING_DTYPE)
        handle.create_dataset("embedding", data=embedding.astype(np.float32))
        if logits is not None:
            handle.create_dataset("logits", data=logits.astype(np.float32))
        handle.create_dataset("ok", data=ok.astype(bool))
        scalars = {}
        for key, value in attrs.items():
            if isinstance(value, np.ndarray):
                handle.create_dataset(f"extra/{key}", data=value)
            else:
                scalars[key] = value
        encode_attrs(handle.attrs, {**scalars, "committed_rows": n, "complete": True})
