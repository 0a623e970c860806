"""The feature-file contract (``features/<backbone>.h5``), read and written in one place.

Layout:
    image      [N]    utf-8 strings: distinct image i of the manifest (first-occurrence order)
    embedding  [N, D] float32 (float16 accepted: readers widen it to float32; the synthetic
               heads-bench caches use it to halve their disk, see heads/synthetic.py)
    logits     [N, K] as embedding, only for backbones that have logits
    spatial    [N, G*G*C] float16, only when extracted with a spatial grid (`pipeline extract
               --spatial-grid G`): the backbone's last feature map [C, H, W] average-pooled
               to G x G cells, the cells (tokens) in row-major order, each its C channels:
               column t*C + c is channel c of cell t (`spatial_tokens` gives T and C). float16
               halves a part that is G*G times as wide as the embedding; readers widen it.
    ok         [N]    bool: the image was decoded and processed (else zero features)
attrs:
    backbone, package_version, weights_sha256, preprocessing (JSON), logit_names (JSON list),
    abaw_expr_index (JSON list of 8 logit indices giving ABAW codes 0..7, null for a class the
    backbone does not predict; or absent),
    groups (JSON {name: [start, stop]}: named column ranges of `embedding`),
    spatial_grid (int G, only with a `spatial` dataset),
    committed_rows (int), complete (bool), plus any provenance the writer adds; the extraction
    engine adds failed_count and failed_images (JSON list of {image, reason}, capped), CNN
    files add runtime ("torch" or "onnx"), runtime_version and, for onnx, onnx_graph_sha256,
    and shard files add shard ("i/n") and shard_rows (JSON [start, stop]).

Arrays a backbone needs to reproduce its features (e.g. the openface HOG PCA's mean and
components) are datasets under ``extra/``: `write_feature_file` puts every array-valued attr
there, and `FeatureFile.extra(name)` reads one back.

A file whose `complete` attr is false is a run in progress or an interrupted one: readers
refuse it.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from affectpipe.errors import InputError
from affectpipe.fsutil import atomic_path, ensure_free_space, json_sha256, reserve_space

JSON_ATTRS = (
    "preprocessing",
    "logit_names",
    "abaw_expr_index",
    "groups",
    "failed_images",
    "shard_rows",
)
STRING_DTYPE = h5py.string_dtype(encoding="utf-8")
H5_CHUNK_ROWS = 1024  # rows per HDF5 chunk, and per block of `row_blocks`
DATA_NAMES = ("embedding", "logits", "spatial", "ok")  # the per-row arrays of a feature file
MAX_COMPRESSION = 1000  # declared/stored size ratio a compressed array may have
# The float datasets of a feature file, each [N, columns]; each is a selectable part.
FLOAT_PARTS = ("embedding", "logits", "spatial")
SPATIAL_DTYPE = "float16"
MAX_SPATIAL_GRID = 16  # cells per side of the pooled map: a few fit a face's parts
# Attrs that say nothing about the rows' values: left out of `feature_fingerprint`. The
# runtime that computed the rows is among them: ONNX Runtime and torch agree within the parity
# tolerance (`affectpipe.extract.onnx_runtime`), so switching makes no prediction stale.
RUNTIME_ATTRS = ("runtime", "runtime_version", "onnx_graph_sha256")
UNFINGERPRINTED_ATTRS = ("complete", "committed_rows", *RUNTIME_ATTRS)


def decode_attrs(raw: h5py.AttributeManager) -> dict[str, Any]:
    """A feature file's attrs as Python values (JSON attrs decoded); `CorruptFeatureFile`
    when they cannot be read."""
    attrs: dict[str, Any] = {}
    try:
        for key, value in raw.items():
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, np.generic):
                value = value.item()
            if key in JSON_ATTRS and isinstance(value, str):
                value = json.loads(value)
            attrs[key] = value
    except (OSError, ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError
        path = Path(h5py.h5f.get_name(raw._id).decode(errors="replace"))
        raise corrupt(path, f"unreadable attributes: {exc}") from exc
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
        """Selectable parts: `embedding`, `logits` and `spatial` (where present) and the
        named groups."""
        with _open_h5(self.path) as handle:
            names = [name for name in FLOAT_PARTS if name in handle]
        return names + list(self.attrs.get("groups", {}))

    def load(self, part: str) -> np.ndarray:
        """Load a float dataset (`FLOAT_PARTS`) or a named group of embedding columns as
        float32."""
        with self.reader(part) as read:
            return read(slice(None))

    def width(self, part: str) -> int:
        """Columns of `part` (reads no values)."""
        with _open_h5(self.path) as handle:
            dataset, columns = self._part(handle, part)
            return len(range(*columns.indices(dataset.shape[1])))

    def _part(self, handle: h5py.File, part: str) -> tuple[h5py.Dataset, slice]:
        """The dataset holding `part` and its columns there."""
        groups = self.attrs.get("groups", {})
        if part in FLOAT_PARTS and part in handle:
            return handle[part], slice(None)
        if part in groups:
            return handle["embedding"], slice(*groups[part])
        raise InputError(f"{self.path}: no part {part!r}; available: {', '.join(self.parts())}")

    @contextlib.contextmanager
    def reader(self, part: str, widen: bool = True) -> Iterator[Callable[[slice], np.ndarray]]:
        """Open the file once and yield ``read(rows)``: a slice of rows of `part` as float32
        (`widen` false: as stored, for a caller that keeps only some rows before widening
        them with `as_float32`). Reading a bounded slice at a time keeps memory independent
        of the file's size."""
        with _open_h5(self.path) as handle:
            dataset, columns = self._part(handle, part)

            def read(rows: slice) -> np.ndarray:
                block = _read(self.path, dataset, (rows, columns))
                return as_float32(block) if widen else block

            yield read

    def extra(self, name: str) -> np.ndarray:
        """An array stored under ``extra/`` (see the module docstring)."""
        with _open_h5(self.path) as handle:
            if f"extra/{name}" not in handle:
                raise InputError(f"{self.path}: no extra array {name!r}")
            dataset = handle[f"extra/{name}"]
            if not isinstance(dataset, h5py.Dataset):
                raise corrupt(self.path, f"extra/{name} is not an array")
            _check_declared_size(self.path, dataset)
            return _read(self.path, dataset, ...)


class IncompleteFeatureFile(InputError):
    """A feature file whose extraction has not finished (resumable, not corrupt)."""


def rebuild_command(path: Path) -> str:
    """The command that rewrites the feature file at ``<cache>/<dataset>/features/<b>.h5``."""
    return f"pipeline extract --dataset {path.parent.parent.name} --backbones {path.stem} --force"


class CorruptFeatureFile(InputError, OSError):
    """A damaged feature file (exit 2). Also an OSError, so that callers treating an
    unreadable file as absent (extract's up-to-date check, which then rebuilds it) still do."""


def corrupt(path: Path, why: str) -> CorruptFeatureFile:
    return CorruptFeatureFile(
        f"{path} is corrupt ({why}): rebuild it with `{rebuild_command(path)}`"
    )


@contextlib.contextmanager
def _open_h5(path: Path) -> Iterator[h5py.File]:
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:  # not HDF5, truncated, unreadable
        raise corrupt(path, f"not a readable HDF5 file: {exc}") from exc
    with handle:
        yield handle


def _read(path: Path, dataset: h5py.Dataset, selection: Any) -> np.ndarray:
    try:
        return dataset[selection]
    except (OSError, ValueError, TypeError) as exc:  # damaged chunks, bad types
        raise corrupt(path, f"cannot read {dataset.name}: {exc}") from exc


def as_float32(block: np.ndarray) -> np.ndarray:
    """float32 view or copy of a block read from a feature file. float16 goes through torch:
    numpy's half-to-float cast runs ~5x slower (~80 M values/s here), which at 1M rows of
    2,000 columns would cost more than the whole heads run."""
    if block.dtype != np.float16:
        return block.astype(np.float32, copy=False)
    import torch

    out = np.empty(block.shape, dtype=np.float32)
    torch.from_numpy(out).copy_(torch.from_numpy(block))
    return out


def _check_declared_size(path: Path, dataset: h5py.Dataset) -> None:
    """Refuse an array whose declared size cannot be stored in the file (no writer here
    compresses): reading it would allocate that much memory for nothing."""
    declared = math.prod(dataset.shape or ()) * dataset.dtype.itemsize
    compressed = dataset.id.get_create_plist().get_nfilters() > 0
    limit = path.stat().st_size * (MAX_COMPRESSION if compressed else 1)
    if declared > limit:
        raise corrupt(
            path,
            f"{dataset.name} declares {declared / 2**30:.1f} GiB "
            f"{tuple(dataset.shape)} in a {path.stat().st_size} byte file",
        )


def _dataset(path: Path, handle: h5py.File, name: str, ndim: int, kinds: str) -> h5py.Dataset:
    """`name` as a dataset of `ndim` dims whose dtype kind is in `kinds`, size checked."""
    dataset = handle.get(name)
    if not isinstance(dataset, h5py.Dataset):
        raise corrupt(path, f"no {name!r} dataset")
    if dataset.ndim != ndim or dataset.dtype.kind not in kinds:
        raise corrupt(path, f"{name!r} is {dataset.dtype} {tuple(dataset.shape)}")
    _check_declared_size(path, dataset)
    return dataset


def read_feature_file(path: str | Path) -> FeatureFile:
    """Open a complete feature file, checking its structure (raises InputError naming the
    file and the command that rebuilds it when it is corrupt, `IncompleteFeatureFile` when
    its extraction has not finished)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"no feature file at {path}: run `pipeline extract` first")
    with _open_h5(path) as handle:
        attrs = decode_attrs(handle.attrs)
        image = _dataset(path, handle, "image", 1, "OSU")
        if not attrs.get("complete", False):
            raise IncompleteFeatureFile(
                f"{path} is incomplete ({attrs.get('committed_rows', 0)} of "
                f"{len(image)} rows): rerun `pipeline extract` to finish it"
            )
        ok = _dataset(path, handle, "ok", 1, "biu")
        arrays = [_dataset(path, handle, "embedding", 2, "f")]
        arrays += [_dataset(path, handle, n, 2, "f") for n in FLOAT_PARTS[1:] if n in handle]
        rows = {d.name.lstrip("/"): d.shape[0] for d in (image, ok, *arrays)}
        if len(set(rows.values())) != 1:
            raise corrupt(path, f"datasets disagree on the number of rows: {rows}")
        try:
            images = image.asstr()[...]
        except (OSError, ValueError, TypeError, UnicodeDecodeError) as exc:
            raise corrupt(path, f"cannot read /image: {exc}") from exc
        ok_values = _read(path, ok, ...).astype(bool)
        if "spatial" in handle:
            spatial_tokens(attrs, handle["spatial"].shape[1], path)
    _check_groups(path, attrs.get("groups", {}), arrays[0].shape[1])
    return FeatureFile(path=path, images=np.asarray(images, dtype=str), ok=ok_values, attrs=attrs)


def spatial_tokens(attrs: dict[str, Any], width: int, path: Path) -> tuple[int, int]:
    """(tokens, channels) of a `spatial` part of `width` columns, from the file's
    `spatial_grid` attr; `CorruptFeatureFile` when they do not fit."""
    grid = attrs.get("spatial_grid")
    if type(grid) is not int or not 1 <= grid <= MAX_SPATIAL_GRID or width % (grid * grid):
        raise corrupt(path, f"spatial_grid {grid!r} does not fit {width} spatial columns")
    return grid * grid, width // (grid * grid)


def _check_groups(path: Path, groups: Any, width: int) -> None:
    def fits(r: Any) -> bool:
        return (
            isinstance(r, list)
            and len(r) == 2
            and all(type(v) is int for v in r)
            and (0 <= r[0] <= r[1] <= width)
        )

    if not isinstance(groups, dict) or not all(fits(r) for r in groups.values()):
        raise corrupt(path, f"groups attr {groups!r} does not fit {width} embedding columns")


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
    block = {"embedding": embedding, "ok": ok, **({"logits": logits} if logits is not None else {})}
    write_feature_file_streamed(
        Path(path),
        images,
        iter([(0, block)]),
        attrs,
        embedding_dim=embedding.shape[1],
        logits_dim=None if logits is None else logits.shape[1],
    )


def estimated_file_bytes(
    images: np.ndarray, columns: int, extra_bytes: int = 0, itemsize: int = 4
) -> int:
    """A generous size of a feature file: float columns (`itemsize` bytes each), ok, image
    keys and HDF5 overhead."""
    keys = sum(len(str(image).encode()) + 48 for image in images)  # + heap ids and headers
    data = len(images) * (itemsize * columns + 1) + keys + extra_bytes
    return data + data // 20 + (256 << 10)


def write_feature_file_streamed(
    path: Path,
    images: np.ndarray,
    chunks: Iterator[tuple[int, dict[str, np.ndarray]]],
    attrs: dict[str, Any],
    *,
    embedding_dim: int,
    logits_dim: int | None,
    spatial_dim: int | None = None,
    dtype: str = "float32",
) -> None:
    """Write a complete feature file (see `affectpipe.features`) chunk by chunk, atomically.
    `dtype`: float32, or float16 where disk matters more than precision (the synthetic
    1M-row heads bench cache). `spatial_dim`: the width of a `spatial` part (always stored
    as float16), or None.

    `chunks` yields (first row, {"embedding", "ok"[, "logits", "spatial"]}) covering every
    row once, in order; the file becomes visible only after the last chunk and the attrs
    are written. Array-valued attrs go under ``extra/``.

    The file's estimated size is checked and reserved on disk (fallocate) before HDF5
    writes anything: HDF5 cannot recover from a failed write (the process segfaults when the
    broken file is released), so running out of space must happen before it starts.
    """
    n = len(images)
    scalars = {k: v for k, v in attrs.items() if not isinstance(v, np.ndarray)}
    arrays = {k: v for k, v in attrs.items() if isinstance(v, np.ndarray)}
    columns = embedding_dim + (logits_dim or 0)
    extra_bytes = sum(a.nbytes for a in arrays.values())
    extra_bytes += len(images) * (spatial_dim or 0) * np.dtype(SPATIAL_DTYPE).itemsize
    needed = estimated_file_bytes(images, columns, extra_bytes, np.dtype(dtype).itemsize)
    path.parent.mkdir(parents=True, exist_ok=True)
    ensure_free_space(path, needed)
    chunk_shape = max(1, min(n, H5_CHUNK_ROWS))
    with atomic_path(path) as tmp, open(tmp, "w+b") as file:
        reserve_space(file.fileno(), needed)
        with h5py.File(file, "w") as handle:
            handle.create_dataset(
                "image", data=np.asarray(images, dtype=object), dtype=STRING_DTYPE
            )
            embedding = handle.create_dataset(
                "embedding", (n, embedding_dim), dtype, chunks=(chunk_shape, embedding_dim)
            )
            logits = None
            if logits_dim is not None:
                logits = handle.create_dataset(
                    "logits", (n, logits_dim), dtype, chunks=(chunk_shape, logits_dim)
                )
            spatial = None
            if spatial_dim is not None:
                spatial = handle.create_dataset(
                    "spatial", (n, spatial_dim), SPATIAL_DTYPE, chunks=(chunk_shape, spatial_dim)
                )
            ok = handle.create_dataset("ok", (n,), "bool")
            covered = 0
            for start, block in chunks:
                if start != covered:
                    raise ValueError(f"{path}: rows {covered}..{start} are missing")
                stop = start + len(block["ok"])
                embedding[start:stop] = block["embedding"]
                ok[start:stop] = block["ok"]
                if logits is not None:
                    logits[start:stop] = block["logits"]
                if spatial is not None:
                    spatial[start:stop] = block["spatial"]
                covered = stop
            if covered != n:
                raise ValueError(f"{path}: {covered} of {n} rows written")
            for key, value in arrays.items():
                handle.create_dataset(f"extra/{key}", data=value)
            encode_attrs(handle.attrs, {**scalars, "committed_rows": n, "complete": True})


def read_header(path: str | Path) -> dict[str, Any]:
    """A feature file's attrs, decoded (no feature data read). Raises OSError if unreadable."""
    with _open_h5(Path(path)) as handle:
        return decode_attrs(handle.attrs)


def part_dims(path: str | Path) -> dict[str, int | None]:
    """`embedding_dim`, `logits_dim` and `spatial_dim` (None for a part the file lacks):
    what the writer takes."""
    with _open_h5(Path(path)) as handle:
        return {
            "embedding_dim": handle["embedding"].shape[1],
            "logits_dim": handle["logits"].shape[1] if "logits" in handle else None,
            "spatial_dim": handle["spatial"].shape[1] if "spatial" in handle else None,
        }


def ok_mask(path: str | Path) -> np.ndarray:
    """The file's `ok` column: rows whose features were computed."""
    with _open_h5(Path(path)) as handle:
        return handle["ok"][...].astype(bool)


def row_blocks(
    path: str | Path,
    block_rows: int = H5_CHUNK_ROWS,
    names: tuple[str, ...] = DATA_NAMES,
    wanted: np.ndarray | None = None,
) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(first row, {name: rows}) of the file's data arrays (those of `names` it has), in
    blocks of `block_rows`: the one block reader for re-writing and scanning files. With
    `wanted` (sorted row indices), blocks holding none of them are not read."""
    with _open_h5(Path(path)) as handle:
        present = [name for name in names if name in handle]
        for start in range(0, len(handle["ok"]), block_rows):
            if wanted is not None:
                lo, hi = np.searchsorted(wanted, [start, start + block_rows])
                if hi == lo:
                    continue
            yield start, {name: handle[name][start : start + block_rows] for name in present}


def non_finite_ok_rows(path: str | Path) -> int:
    """Rows marked ok whose features hold NaN or inf (never written so: the file is damaged)."""
    bad = 0
    for _, block in row_blocks(path):
        finite = np.ones(len(block["ok"]), dtype=bool)
        for name in FLOAT_PARTS:
            if name in block:
                finite &= np.isfinite(block[name]).all(axis=1)
        bad += int((block["ok"].astype(bool) & ~finite).sum())
    return bad


def feature_fingerprint(path: str | Path) -> str:
    """sha256 over a complete feature file's identity: every attr (weights sha256,
    preprocessing, descriptor parameters, manifest fingerprint, package version, ...) and the
    shape of each array. Reads no feature data, so it is cheap enough to check on every load.

    Re-extracting with other weights, another manifest or another descriptor changes it.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"no feature file at {path}: run `pipeline extract` first")
    try:
        with h5py.File(path, "r") as handle:
            attrs = decode_attrs(handle.attrs)
            shapes = {
                name: list(handle[name].shape)
                for name in ("image", *FLOAT_PARTS, "ok")
                if name in handle
            }
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path}: not a readable feature file ({exc}); rerun `pipeline extract`"
        ) from None
    identity = {k: v for k, v in attrs.items() if k not in UNFINGERPRINTED_ATTRS}
    return json_sha256({"attrs": identity, "shapes": shapes})
