"""Feature sets: which cached backbone parts a head reads, and loading them joined to the manifest.

Spec language: ``BACKBONE:PART[+PART...]``, several backbones joined by ``+BACKBONE:PART``.
A token with a colon starts a new backbone; a token without one is another part of the
current backbone::

    mt-emotieffnet:logits
    mt-emotieffnet:embedding+logits
    mt-emotieffnet:embedding+ddamfn:embedding

Loading joins each feature file to the manifest (an image -> feature-row index, kept per
file and modification time), so repeated image keys in the manifest simply reuse a feature
row. Feature values are read on demand, a bounded block of HDF5 rows at a time, never a
whole file: memory does not grow with the raw width times the rows.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.features import (
    FeatureFile,
    IncompleteFeatureFile,
    as_float32,
    corrupt,
    read_feature_file,
    spatial_tokens,
)

if TYPE_CHECKING:  # the heads' scaler, applied block by block here
    from affectpipe.heads.preprocess import FeatureScaler

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@-]*$")


@dataclass(frozen=True)
class FeatureSet:
    """An ordered tuple of (backbone, part) pairs; the head's input is their concatenation."""

    parts: tuple[tuple[str, str], ...]

    @property
    def spec(self) -> str:
        tokens: list[str] = []
        current = None
        for backbone, part in self.parts:
            tokens.append(part if backbone == current else f"{backbone}:{part}")
            current = backbone
        return "+".join(tokens)

    @property
    def slug(self) -> str:
        """File-name-safe form of the spec (``:`` becomes ``.``)."""
        return self.spec.replace(":", ".")

    @property
    def backbones(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(backbone for backbone, _ in self.parts))

    def __str__(self) -> str:
        return self.spec


CANDIDATE_SEPARATOR = "__"  # between a feature set's slug and the model in a candidate name


def candidate_name(features: FeatureSet, model: str) -> str:
    """A candidate's name, ``<feature-set slug>__<model>``: its prediction and head files'."""
    return f"{features.slug}{CANDIDATE_SEPARATOR}{model}"


def split_candidate_name(name: str) -> tuple[str, str] | None:
    """(feature-set slug, model) of a candidate name; None if `name` is not one."""
    slug, separator, model = name.rpartition(CANDIDATE_SEPARATOR)
    return (slug, model) if separator and slug and model else None


def parse_feature_set(spec: str) -> FeatureSet:
    """Parse ``BACKBONE:PART[+PART...][+BACKBONE:PART...]``; also accepts the slug form."""
    text = spec.strip()
    if not text:
        raise InputError("empty feature set: expected BACKBONE:PART, e.g. mt-emotieffnet:logits")
    if ":" not in text and "." in text.split("+")[0]:
        # Slug form from a file name: the first '.' of each backbone token is the colon.
        text = "+".join(t.replace(".", ":", 1) if "." in t else t for t in text.split("+"))
    parts: list[tuple[str, str]] = []
    backbone: str | None = None
    for position, token in enumerate(text.split("+"), start=1):
        token = token.strip()
        if token.count(":") > 1:
            raise InputError(f"feature set {spec!r}: token {position} {token!r} has two colons")
        if ":" in token:
            backbone, part = (s.strip() for s in token.split(":"))
            if not backbone or not _NAME.match(backbone):
                raise InputError(f"feature set {spec!r}: bad backbone name in {token!r}")
        else:
            part = token
            if backbone is None:
                raise InputError(
                    f"feature set {spec!r}: {token!r} has no backbone; "
                    "start with BACKBONE:PART, e.g. mt-emotieffnet:embedding"
                )
        if not part or not _NAME.match(part):
            raise InputError(f"feature set {spec!r}: bad or empty part name in token {position}")
        if (backbone, part) in parts:
            raise InputError(f"feature set {spec!r}: {backbone}:{part} is listed twice")
        parts.append((backbone, part))
    return FeatureSet(tuple(parts))


DEFAULT_CHUNK_ROWS = 16384  # feature-file rows read at a time

# (path, mtime_ns, part) -> float32 array of a whole part (`load_part`); files per (path, mtime).
_PART_CACHE: dict[tuple[str, int, str], np.ndarray] = {}
_FILE_CACHE: dict[tuple[str, int], FeatureFile] = {}


def clear_cache() -> None:
    _PART_CACHE.clear()
    _FILE_CACHE.clear()


def _open(path: Path) -> tuple[FeatureFile, int]:
    if not path.exists():
        raise InputError(f"no feature file at {path}: run `pipeline extract` for this backbone")
    mtime = path.stat().st_mtime_ns
    key = (str(path), mtime)
    if key not in _FILE_CACHE:
        _FILE_CACHE[key] = read_feature_file(path)
    return _FILE_CACHE[key], mtime


def load_part(path: Path, part: str) -> tuple[np.ndarray, FeatureFile]:
    """One whole part of a feature file as float32 [N_file, D], read (and checked) once per
    process: for narrow parts (logits). Heads read through `load_feature_set`, in chunks."""
    handle, mtime = _open(path)
    key = (str(path), mtime, part)
    if key not in _PART_CACHE:
        data = handle.load(part)
        _check_finite(data, np.arange(len(data)), handle, part)
        _PART_CACHE[key] = data
    return _PART_CACHE[key], handle


def manifest_rows_to_feature_rows(images: np.ndarray, manifest: pd.DataFrame) -> np.ndarray:
    """Feature-file row of each manifest row (-1 where the file lacks the image)."""
    index = pd.Index(images)
    if not index.is_unique:
        index = index.drop_duplicates()  # keep the first row of a duplicated key
        images = np.asarray(index)
    positions = pd.Index(images).get_indexer(manifest["image"].to_numpy(dtype=object))
    return positions.astype(np.int64)


@dataclass
class LoadedFeatures:
    """A feature set joined to the manifest. Nothing but the join is held in memory:
    `take(rows)` and `transform(scaler, rows)` read the rows they need from the HDF5 files,
    one block of at most `chunk_rows` file rows at a time, so memory stays bounded by what
    is asked for.

    ok [n_rows]: the row's image is in every file of the set and ok there.
    """

    feature_set: FeatureSet
    ok: np.ndarray
    sources: list[tuple[FeatureFile, str]]  # per (backbone, part): its file and part name
    widths: list[int]  # per part: its columns
    row_maps: list[np.ndarray]  # per part: feature-file row of each manifest row (0 if absent)
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    read_seconds: float = 0.0  # time spent reading (and widening) file rows so far

    @property
    def width(self) -> int:
        return sum(self.widths)

    @property
    def has_spatial(self) -> bool:
        """Whether a part is a `spatial` one: such a set is standardised, never projected,
        so that its columns stay the cells' channels (the `attention` head's tokens)."""
        return any(part == "spatial" for _, part in self.feature_set.parts)

    def spatial_tokens(self) -> int:
        """Tokens per row of a set that is one ``BACKBONE:spatial`` part (InputError for any
        other set: the `attention` head reads only that)."""
        if [part for _, part in self.feature_set.parts] != ["spatial"]:
            raise InputError(
                f"{self.feature_set}: the attention head reads one BACKBONE:spatial part "
                "(extracted with `pipeline extract --spatial-grid G`)"
            )
        handle, _ = self.sources[0]
        return spatial_tokens(handle.attrs, self.widths[0], handle.path)[0]

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Features of manifest rows `rows` as one float32 [len(rows), width] array."""
        out = np.empty((len(rows), self.width), dtype=np.float32)
        column = 0
        for (handle, part), width, row_map in zip(
            self.sources, self.widths, self.row_maps, strict=True
        ):
            target = out[:, column : column + width]
            for positions, values in self._blocks(handle, part, row_map[rows]):
                target[positions] = values
            column += width
        return out

    def transform(self, scaler: FeatureScaler, rows: np.ndarray) -> np.ndarray:
        """``scaler.transform(self.take(rows))`` without gathering raw rows. A projecting
        scaler is an affine map, so it is applied part by part, Z = sum_p X_p W_p - b, each
        X_p W_p on a block of file rows as it is read; only the projected columns are
        gathered into the order of `rows`. (Equal to the whole-matrix product up to float32
        rounding: the sum runs in another order.)"""
        if scaler.projection_ is None:
            return scaler.transform(self.take(rows))
        if scaler.n_features_in_ != self.width:
            raise ValueError(f"expected {scaler.n_features_in_} columns, got {self.width}")
        weights = np.split(scaler.projection_, np.cumsum(self.widths)[:-1])
        out = np.zeros((len(rows), scaler.n_features_out), dtype=np.float32)
        for (handle, part), weight, row_map in zip(
            self.sources, weights, self.row_maps, strict=True
        ):
            for positions, values in self._blocks(handle, part, row_map[rows], weight):
                out[positions] += values
        out -= scaler.offset_
        return out

    def scaled_blocks(self, scaler: FeatureScaler) -> Iterator[tuple[int, np.ndarray]]:
        """(start, Z) for consecutive blocks of `chunk_rows` manifest rows from `start`: Z holds
        their scaled features (`transform`), zeros for rows that are not ok."""
        for start in range(0, len(self.ok), self.chunk_rows):
            ok = self.ok[start : start + self.chunk_rows]
            block = np.zeros((len(ok), scaler.n_features_out), dtype=np.float32)
            block[ok] = self.transform(scaler, start + np.flatnonzero(ok))
            yield start, block

    def _blocks(
        self,
        handle: FeatureFile,
        part: str,
        file_rows: np.ndarray,
        weight: np.ndarray | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions, values): values[i] = row file_rows[positions[i]] of the part as float32
        (times `weight` if given), reading the file in blocks of `chunk_rows` rows (only
        blocks holding wanted rows, only from the first to the last wanted). A block mostly
        wanted is widened and multiplied whole, then its products picked; a sparse one (a
        sample) has its wanted rows picked first."""
        if not len(file_rows):
            return
        order = np.argsort(file_rows, kind="stable")
        wanted = file_rows[order]
        bounds = np.flatnonzero(np.diff(wanted // self.chunk_rows)) + 1
        with handle.reader(part, widen=False) as read:
            for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(wanted)], strict=True):
                first, last = int(wanted[lo]), int(wanted[hi - 1]) + 1
                tick = time.perf_counter()
                span = read(slice(first, last))
                offsets = wanted[lo:hi] - first
                if weight is not None and 2 * (hi - lo) >= last - first:
                    span = as_float32(span)
                    self.read_seconds += time.perf_counter() - tick
                    values = (span @ weight)[offsets]
                else:
                    values = as_float32(span[offsets])
                    self.read_seconds += time.perf_counter() - tick
                    if weight is not None:
                        values = values @ weight
                _check_finite(values, wanted[lo:hi], handle, part)
                yield order[lo:hi], values


def load_feature_set(
    paths: DatasetPaths,
    feature_set: FeatureSet,
    manifest: pd.DataFrame,
    joins: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> LoadedFeatures:
    """Join the feature set's parts to the manifest rows (reads no feature values).

    Rows whose image is absent from a file, or is ``ok=false`` in any backbone, get
    ``ok=False``: they must not be used (and get no prediction). `joins` (backbone -> (row
    map, ok)) keeps each backbone's join for later feature sets on the same manifest: at
    s-Aff-Wild2 scale a join costs ~0.25 s.
    """
    if chunk_rows < 1:
        raise ValueError("chunk_rows must be positive")
    joins = {} if joins is None else joins
    ok = np.ones(len(manifest), dtype=bool)
    sources: list[tuple[FeatureFile, str]] = []
    widths: list[int] = []
    row_maps: list[np.ndarray] = []
    for backbone, part in feature_set.parts:
        handle, _ = _open(paths.features(backbone))
        widths.append(handle.width(part))
        if backbone not in joins:
            rows = manifest_rows_to_feature_rows(handle.images, manifest)
            _check_rows_match(handle, rows)
            usable = rows >= 0  # in the file, and ok there
            usable[usable] &= handle.ok[rows[usable]]
            joins[backbone] = (np.maximum(rows, 0), usable)
        row_map, backbone_ok = joins[backbone]
        ok &= backbone_ok
        sources.append((handle, part))
        row_maps.append(row_map)
    return LoadedFeatures(feature_set, ok, sources, widths, row_maps, chunk_rows)


def feature_arrays(paths: DatasetPaths, spec: str) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """A feature set (e.g. ``"openface:embedding"``) as arrays for every manifest row:
    (X [n_rows, width] float32, ok [n_rows] bool, the manifest). Rows with ok false hold
    zeros-filled features that must not be used."""
    from affectpipe.manifest import read_manifest

    manifest = read_manifest(paths.manifest)
    loaded = load_feature_set(paths, parse_feature_set(spec), manifest)
    return loaded.take(np.arange(len(manifest))), loaded.ok, manifest


def _check_rows_match(handle: FeatureFile, rows: np.ndarray) -> None:
    """A feature file holds exactly the manifest's distinct images: a file lacking some, or
    holding others, was made from another manifest or damaged."""
    missing = int((rows < 0).sum())
    used = int(np.count_nonzero(np.bincount(rows[rows >= 0], minlength=len(handle.images))))
    if missing or used != len(handle.images):
        raise corrupt(
            handle.path,
            f"its {len(handle.images)} rows do not match the manifest's images: {missing} "
            f"manifest rows have no feature row, {len(handle.images) - used} feature rows "
            "no manifest image",
        )


def _check_finite(
    values: np.ndarray, file_rows: np.ndarray, handle: FeatureFile, name: str
) -> None:
    """Refuse NaN/inf in the ok ones of `file_rows` (the file rows `values` were computed
    from: raw or projected, a non-finite input makes its row non-finite). One cheap pass: a
    column sum is finite unless an entry is not."""
    if np.isfinite(values.sum(axis=0, dtype=np.float64)).all():
        return
    bad_rows = file_rows[~np.isfinite(values).all(axis=1) & handle.ok[file_rows]]
    if len(bad_rows):
        bad = len(np.unique(bad_rows))
        raise InputError(f"{handle.path}: {bad} ok rows of {name} hold NaN or inf values")


def available_backbones(
    paths: DatasetPaths, problems: list[str] | None = None
) -> dict[str, dict[str, int]]:
    """Backbones with a complete feature file in the cache -> {selectable part: its width}.

    Files that are there but not usable are appended to `problems` (file and why).
    """
    found: dict[str, list[str]] = {}
    problems = [] if problems is None else problems
    for path in sorted(paths.features_dir.glob("*.h5")):
        try:
            handle, _ = _open(path)
        except IncompleteFeatureFile as exc:
            problems.append(str(exc))  # an unfinished extraction: not a candidate until it ends
            continue
        if handle.attrs.get("shard"):
            # One shard of a sharded extraction: `pipeline extract --merge` joins them.
            problems.append(f"{path.name} is one shard: run `pipeline extract --merge`")
            continue
        found[path.stem] = {part: handle.width(part) for part in handle.parts()}
    return found
