"""Where things live, and defaults kept in one place.

Cache layout (all under ``<cache-dir>/<dataset>/``, see the design's data contracts)::

    manifest.parquet
    features/<backbone>.h5
    runs/<run>/heads/<task>/<candidate>.json (+ .safetensors)
    runs/<run>/preds/<task>/<candidate>.parquet
    runs/<run>/blend/...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from affectpipe.errors import InputError

DEFAULT_CACHE_DIR = "cache"
DEFAULT_RUN = "default"
# Blend: the largest share of a task's listed test rows that may lack a real prediction,
# and how the submission picks between the blend and the best single candidate.
DEFAULT_MAX_FILLED = 0.05
BLEND_PREFER = ("best", "blend")
# Above this many labelled validation rows the blend's searches score a systematic sample of
# them (`blend.tuning.search_rows`): at 30 fps neighbouring frames are near-duplicates, so
# every k-th frame of every video carries almost all the information at a fraction of the
# cost (s-Aff-Wild2's 26,876 rows are far below it).
BLEND_SEARCH_ROWS = 100_000


def default_cache_dir() -> Path:
    return Path(os.environ.get("AFFECTPIPE_CACHE", DEFAULT_CACHE_DIR))


def checked_name(kind: str, name: str) -> str:
    """A dataset or run name is one plain folder name inside the cache (exit 2 otherwise)."""
    seps = {"/", "\\", os.sep, *((os.altsep,) if os.altsep else ())}
    if not name or name.strip() != name or name in (".", "..") or "\0" in name:
        raise InputError(f"bad {kind} name {name!r}: use a plain name such as 'default'")
    if any(sep in name for sep in seps) or Path(name).is_absolute():
        raise InputError(
            f"bad {kind} name {name!r}: names are folders inside the cache, without path separators"
        )
    return name


def weights_dir() -> Path:
    """Downloaded weight files: ``$AFFECTPIPE_HOME/weights`` (default ``~/.cache/affectpipe``)."""
    home = os.environ.get("AFFECTPIPE_HOME") or Path.home() / ".cache" / "affectpipe"
    return Path(home) / "weights"


@dataclass(frozen=True)
class DatasetPaths:
    """Paths of one dataset's cache."""

    root: Path

    @classmethod
    def of(cls, cache_dir: str | Path, dataset: str) -> DatasetPaths:
        return cls(Path(cache_dir) / checked_name("dataset", dataset))

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    def features(self, backbone: str) -> Path:
        return self.features_dir / f"{backbone}.h5"

    def run(self, run: str = DEFAULT_RUN) -> Path:
        return self.root / "runs" / checked_name("run", run)

    def head(self, run: str, task: str, candidate: str) -> Path:
        return self.run(run) / "heads" / task / f"{candidate}.json"

    def preds(self, run: str, task: str, candidate: str) -> Path:
        return self.run(run) / "preds" / task / f"{candidate}.parquet"

    def blend_dir(self, run: str = DEFAULT_RUN) -> Path:
        return self.run(run) / "blend"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


@dataclass(frozen=True)
class Settings:
    """Global CLI options, passed to every command as the click context object."""

    cache_dir: Path
    verbose: int = 0

    def dataset(self, name: str) -> DatasetPaths:
        return DatasetPaths.of(self.cache_dir, name)
