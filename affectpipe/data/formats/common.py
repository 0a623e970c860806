"""Helpers the ABAW formats share: finding files, reading test lists, building rows."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from affectpipe.data.dataset import TestList
from affectpipe.data.labels import ParsedLabels, missing_labels
from affectpipe.data.records import (
    FrameKeys,
    Records,
    first_field,
    frame_keys,
    looks_like_image_path,
    raise_first,
    read_lines,
)
from affectpipe.errors import InputError


def first_existing(candidates: Iterable[Path]) -> Path | None:
    return next((path for path in candidates if path.exists()), None)


def given_or_found(
    given: str | Path | None, candidates: list[Path], what: str, option: str
) -> Path:
    """The path the user named (must exist) or the first existing default candidate."""
    if given is not None:
        path = Path(given).expanduser()
        if not path.exists():
            raise InputError(f"{what} not found: {path} (given with {option})")
        return path.resolve()
    found = first_existing(candidates)
    if found is None:
        tried = ", ".join(str(c) for c in candidates)
        raise InputError(f"no {what} found (looked for {tried}); name it with {option}")
    return found.resolve()


def read_frame_list(path: Path, style: str) -> tuple[Records, TestList]:
    """A test list of image keys, one per line (`path`, `path,` or `path,values`).

    The first line is a header unless it already looks like an image path; only the text
    before the first comma is kept.
    """
    lines = read_lines(path)
    header = lines[0] if lines and not looks_like_image_path(lines[0]) else None
    body = lines[1:] if header is not None else lines
    records = first_field(path, body, first_line=2 if header is not None else 1)
    trailing = any(line.rstrip().endswith(",") for line in body)
    return records, TestList(path, style, header, trailing)


def fixes_for(records: Records, mask: np.ndarray) -> dict[str, int]:
    """Lines of each file flagged by `mask` (lenient fixes), as {path: count}."""
    counts = np.bincount(records.file[mask], minlength=len(records.paths))
    return {str(records.paths[k]): int(c) for k, c in enumerate(counts) if c}


def merge_fixes(*parts: dict[str, int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in parts:
        for path, count in part.items():
            out[path] = out.get(path, 0) + count
    return out


def keyed_frame(keys: FrameKeys, labels: dict[str, np.ndarray], split: np.ndarray) -> pd.DataFrame:
    """Rows (those `keys.keep`) with image, video, frame, split and the label columns."""
    keep = keys.keep
    frame = pd.DataFrame(
        {
            "image": keys.image[keep],
            "video": keys.video[keep],
            "frame": keys.frame[keep],
            "split": np.asarray(split, dtype=object)[keep],
        }
    )
    for name, values in labels.items():
        frame[name] = values[keep]
    return frame


def listed_rows(records: Records, *, lenient: bool) -> tuple[pd.DataFrame, dict[str, int]]:
    """Test rows of a frame-line list: keys checked, every label missing."""
    keys = frame_keys(records)
    if not lenient:
        raise_first(records, keys.problems)
    n = len(records)
    frame = keyed_frame(keys, missing_labels(n), np.full(n, "test", dtype=object))
    return frame, fixes_for(records, keys.fixed | ~keys.keep)


def labelled_rows(
    records: Records, keys: FrameKeys, labels: ParsedLabels, split: np.ndarray
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Annotated rows, labels not parsed here filled as missing; fixes of keys and labels."""
    columns = {**missing_labels(len(records), set(labels.columns)), **labels.columns}
    frame = keyed_frame(keys, columns, split)
    return frame, fixes_for(records, labels.fixed | keys.fixed | ~keys.keep)
