"""Resumable feature store: rows committed as atomically renamed chunk files, then assembled.

HDF5 is not crash-safe while a file is open for writing (a SIGKILL can leave it unreadable),
so rows in progress never live in the ``.h5``. Instead, next to the target file::

    features/.<name>.h5.parts/state.json              what is being computed (the header)
    features/.<name>.h5.parts/chunk-<start>.npz       rows [start, start + chunk_rows)

Each chunk is written to a temporary name, fsynced and renamed, so a chunk file either holds
all its rows or does not exist. A rerun whose header matches continues with the missing
chunks; chunk boundaries are fixed in ``state.json``, so batches (and therefore the float
results) are the same as in an uninterrupted run. When every chunk is present the final
``.h5`` is streamed to a temporary file and renamed into place; only then are the parts
removed. A crash therefore never leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from affectpipe.fsutil import atomic_path, disk_full_as_error

FAILED_LIST_CAP = 100  # failed images listed by name in the file's attrs; all are counted


def parts_dir(target: Path) -> Path:
    return target.parent / f".{target.name}.parts"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartStore:
    """The committed rows of one output file. `header` identifies what is being computed."""

    def __init__(self, target: Path, header: dict[str, Any], n_rows: int, chunk_rows: int):
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be positive")
        self.target = Path(target)
        self.dir = parts_dir(self.target)
        self.header = json.loads(json.dumps(header))  # normalised as it is stored
        self.n_rows = n_rows
        self.chunk_rows = chunk_rows

    def open(self, *, fresh: bool = False) -> int:
        """Resume a matching run in progress (else start over); returns the committed rows."""
        state_path = self.dir / "state.json"
        if not fresh and state_path.exists():
            try:
                state = json.loads(state_path.read_text())
            except (OSError, ValueError):
                state = {}
            if state.get("header") == self.header and state.get("n_rows") == self.n_rows:
                self.chunk_rows = int(state["chunk_rows"])  # boundaries of the run we resume
                return self.committed_rows()
        self.discard()
        state = {"header": self.header, "n_rows": self.n_rows, "chunk_rows": self.chunk_rows}
        with disk_full_as_error(state_path, lambda: 0), atomic_path(state_path) as tmp:
            tmp.write_text(json.dumps(state, indent=1))
        return 0

    def save_runtime(self, record: dict[str, Any]) -> None:
        """Keep the runtime record (`stage.runtime_record`) of the pass computing rows, so a
        file finished by a later process that computes none (all chunks committed) still
        records which runtime computed them."""
        path = self.dir / "runtime.json"
        with disk_full_as_error(path, self.committed_rows), atomic_path(path) as tmp:
            tmp.write_text(json.dumps(record))

    def runtime(self) -> dict[str, Any]:
        """The saved runtime record ({} when none was saved or it is unreadable)."""
        try:
            record = json.loads((self.dir / "runtime.json").read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def chunk_starts(self) -> range:
        return range(0, self.n_rows, self.chunk_rows)

    def chunk_stop(self, start: int) -> int:
        return min(start + self.chunk_rows, self.n_rows)

    def _chunk_path(self, start: int) -> Path:
        return self.dir / f"chunk-{start:012d}.npz"

    def has_chunk(self, start: int) -> bool:
        return self._chunk_path(start).exists()

    def missing_chunks(self) -> list[int]:
        return [start for start in self.chunk_starts() if not self.has_chunk(start)]

    def committed_rows(self) -> int:
        return sum(self.chunk_stop(s) - s for s in self.chunk_starts() if self.has_chunk(s))

    def is_done(self) -> bool:
        return not self.missing_chunks()

    def commit(
        self, start: int, arrays: dict[str, np.ndarray], failed: dict[int, str] | None = None
    ) -> None:
        """Durably commit rows [start, chunk_stop(start)); `failed` maps row -> reason."""
        rows = self.chunk_stop(start) - start
        for name, array in arrays.items():
            if len(array) != rows:
                raise ValueError(f"chunk {start}: {name} has {len(array)} rows, expected {rows}")
        failed = failed or {}
        path = self._chunk_path(start)
        with (
            disk_full_as_error(path, self.committed_rows),
            atomic_path(path) as tmp,
            open(tmp, "wb") as handle,
        ):
            np.savez(
                handle,
                **arrays,
                failed_rows=np.array(sorted(failed), dtype=np.int64),
                failed_reasons=np.array([failed[r] for r in sorted(failed)], dtype=str),
            )
            handle.flush()
            os.fsync(handle.fileno())  # the data is on disk before the rename makes it visible
        _fsync_dir(self.dir)

    def iter_chunks(
        self, names: Sequence[str] | None = None, starts: Sequence[int] | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(start, arrays) of every committed chunk (or of those at `starts`) in row order
        (failures under `failed_*`).

        `names` limits what is read: npz members load lazily, so asking for the small arrays
        never reads the embeddings.
        """
        for start in self.chunk_starts() if starts is None else starts:
            with np.load(self._chunk_path(start), allow_pickle=False) as data:
                yield start, {name: data[name] for name in (names or data.files)}

    def load_rows(self, name: str) -> np.ndarray:
        """One array over all rows (the store must be done)."""
        return np.concatenate([arrays[name] for _, arrays in self.iter_chunks([name])])

    def failures(self) -> dict[int, str]:
        """Row -> reason over every committed chunk."""
        out: dict[int, str] = {}
        for _, arrays in self.iter_chunks(["failed_rows", "failed_reasons"]):
            rows, reasons = arrays["failed_rows"], arrays["failed_reasons"]
            out.update(zip(rows.tolist(), reasons.tolist(), strict=True))
        return out

    def drop_chunks_with_failures(self, retry: Callable[[int], bool]) -> int:
        """Remove committed chunks holding a failed row `retry(row)` accepts (to redo them)."""
        dropped = 0
        for start in self.chunk_starts():
            if not self.has_chunk(start):
                continue
            with np.load(self._chunk_path(start), allow_pickle=False) as data:
                rows = data["failed_rows"].tolist()
            if any(retry(row) for row in rows):
                self._chunk_path(start).unlink()
                dropped += self.chunk_stop(start) - start
        return dropped

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def failure_attrs(images: np.ndarray, failed: dict[int, str]) -> dict[str, Any]:
    """The `failed_count` / `failed_images` attrs: every failure counted, the first few listed."""
    listed = [{"image": str(images[row]), "reason": failed[row]} for row in sorted(failed)]
    return {"failed_count": len(failed), "failed_images": listed[:FAILED_LIST_CAP]}
