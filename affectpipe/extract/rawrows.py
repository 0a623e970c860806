"""A descriptor's raw rows, read back in bounded blocks for its finalisation.

A descriptor (e.g. the OpenFace-style HOG PCA) is finalized over all its raw rows once they
are staged on disk: in the part store of an unsharded run (`StoreRows`) or in the raw shard
files of a sharded one (`ShardRows`). Finalisation reads them twice, each time block by
block, so memory does not grow with the dataset: once for the rows of its fit sample
(`take`), once to turn every row into its final features (`blocks`). `ArrayRows` serves rows
already in memory.

Blockwise float results (BLAS sums) can depend on where blocks start, so consumers cut the
pieces they read into fixed blocks with `reblock`: an unsharded run, a merge of shards and a
resumed run then give the very same features.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from affectpipe.extract.store import PartStore

READ_ROWS = 2048  # rows read at once from a shard file


class RawRows(Protocol):
    """Raw descriptor rows [n_rows, raw_dim] float32 and their `ok` flags."""

    n_rows: int
    ok: np.ndarray  # bool [n_rows]
    key: str  # what the rows were computed from: a state saved for other rows is not reused

    def take(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        """The rows `rows` (sorted, distinct) in order, as consecutive pieces."""
        ...

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows) pieces covering every row once, in order."""
        ...


@dataclass
class Finalized:
    """A finalized descriptor: its width, column groups, attrs, and the rows to write."""

    embedding_dim: int
    groups: dict[str, list[int]]
    attrs: dict[str, Any]
    chunks: Iterator[tuple[int, dict[str, np.ndarray]]]  # (first row, {"embedding", "ok"})


def reblock(
    pieces: Iterable[tuple[int, np.ndarray]], size: int
) -> Iterator[tuple[int, np.ndarray]]:
    """Re-cut consecutive (first row, rows) pieces into blocks starting at multiples of `size`.

    Holds at most one block plus one piece.
    """
    held: list[np.ndarray] = []
    held_start = held_rows = 0
    for start, piece in pieces:
        if not held:
            held_start = start
        at = 0
        while at < len(piece):
            boundary = (held_start + held_rows) // size * size + size
            take = min(len(piece) - at, boundary - held_start - held_rows)
            held.append(piece[at : at + take])
            held_rows += take
            at += take
            if held_start + held_rows == boundary:
                yield held_start, np.concatenate(held) if len(held) > 1 else held[0]
                held, held_start, held_rows = [], boundary, 0
    if held:
        yield held_start, np.concatenate(held) if len(held) > 1 else held[0]


def counted(pieces: Iterable[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    """(rows before, piece) for pieces without row numbers, e.g. `RawRows.take`'s."""
    start = 0
    for piece in pieces:
        yield start, piece
        start += len(piece)


class ArrayRows:
    """Rows already in memory."""

    def __init__(self, raw: np.ndarray, ok: np.ndarray):
        self.raw = np.asarray(raw, dtype=np.float32)
        self.ok = np.asarray(ok, dtype=bool)
        if self.raw.ndim != 2 or len(self.ok) != len(self.raw):
            raise ValueError("raw must be [N, D] and ok [N]")
        self.n_rows = len(self.raw)
        self.key = ""

    def take(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        for start in range(0, len(rows), READ_ROWS):
            yield self.raw[rows[start : start + READ_ROWS]]

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.n_rows, READ_ROWS):
            yield start, self.raw[start : start + READ_ROWS]


class StoreRows:
    """The committed chunks of a complete part store (one chunk file read at a time)."""

    def __init__(self, store: PartStore):
        self.store = store
        self.n_rows = store.n_rows
        self.ok = store.load_rows("ok").astype(bool)
        self.key = json.dumps({"part_store": store.header}, sort_keys=True)

    def take(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        for start in self.store.chunk_starts():
            stop = self.store.chunk_stop(start)
            lo, hi = np.searchsorted(rows, [start, stop])
            if hi > lo:  # chunks without a wanted row are not read
                ((_, arrays),) = self.store.iter_chunks(["embedding"], starts=[start])
                yield arrays["embedding"][rows[lo:hi] - start]

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        for start, arrays in self.store.iter_chunks(["embedding"]):
            yield start, arrays["embedding"]


class ShardRows:
    """The raw rows of complete shard files, in order (`starts`: each file's first row)."""

    def __init__(self, files: Sequence[Path], starts: Sequence[int], n_rows: int, key: str):
        from affectpipe.features import ok_mask

        self.files, self.starts, self.n_rows, self.key = list(files), list(starts), n_rows, key
        self.ok = np.concatenate([ok_mask(path) for path in self.files])

    def _spans(self) -> Iterator[tuple[int, int, Path]]:
        for i, path in enumerate(self.files):
            stop = self.starts[i + 1] if i + 1 < len(self.files) else self.n_rows
            yield self.starts[i], stop, path

    def take(self, rows: np.ndarray) -> Iterator[np.ndarray]:
        from affectpipe.features import row_blocks

        for first, stop, path in self._spans():
            own = rows[(rows >= first) & (rows < stop)] - first
            for at, block in row_blocks(path, READ_ROWS, ("embedding",), wanted=own):
                lo, hi = np.searchsorted(own, [at, at + READ_ROWS])
                yield block["embedding"][own[lo:hi] - at]

    def blocks(self) -> Iterator[tuple[int, np.ndarray]]:
        from affectpipe.features import row_blocks

        for first, _stop, path in self._spans():
            for at, block in row_blocks(path, READ_ROWS, ("embedding",)):
                yield first + at, block["embedding"]
