"""Any table of face crops: a CSV with an image column and whichever label columns it has.

Columns (names are case-insensitive; `AU01` reads as `au1`): `image` (path relative to the
image root), `valence`, `arousal`, `expression` (ABAW codes), `au1`..`au26`, and optionally
`split` (train/val/test), `video`, `frame`. Absent columns and blank cells are missing
labels. Without a split column every row is train, unless `val_fraction` moves that share
of the videos (chosen by a fixed seed) to val.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from affectpipe.data.dataset import Inputs, Table
from affectpipe.data.formats.common import fixes_for, given_or_found
from affectpipe.data.images import keys_digest
from affectpipe.data.labels import LABEL_COLUMNS, missing_labels, parse_labels
from affectpipe.data.records import Problem, Records, read_lines, refuse_escaping_keys
from affectpipe.errors import InputError
from affectpipe.schema import SPLITS

SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
_AU_NAME = re.compile(r"^au0*(\d+)$")
VAL_SPLIT_SEED = 0


def _column_name(raw: str) -> str:
    name = raw.strip().lower()
    match = _AU_NAME.match(name)
    return f"au{int(match.group(1))}" if match else name


class CsvTable:
    name = "csv"
    option_names = (
        "image_root",
        "split_column",
        "video_column",
        "val_fraction",
        "allow_absolute_paths",
    )

    def resolve(
        self,
        root: Path,
        *,
        image_root: str | Path | None = None,
        split_column: str | None = None,
        video_column: str | None = None,
        val_fraction: float | None = None,
        allow_absolute_paths: bool | None = None,
    ) -> Inputs:
        table = _find_csv(root.resolve()) if root.is_dir() else root.resolve()
        folder = table.parent
        keys = _image_keys(table)
        first = keys[0] if keys else None
        candidates = [folder, folder / "images"]
        default = next((c for c in candidates if first and (c / first).exists()), folder)
        images = given_or_found(image_root, [default], "image root", "--image-root")
        options = {
            "csv": str(table),
            "split_column": split_column,
            "video_column": video_column,
            "val_fraction": val_fraction,
        }
        if allow_absolute_paths:
            # Images outside the image root are not in its listing: their presence goes into
            # the options, so the re-index check sees one appear or vanish.
            absolute = [k for k in keys if os.path.isabs(k)]
            found = [k for k in absolute if os.path.isfile(k)]
            options["absolute_images"] = {
                "listed": len(set(absolute)),
                "present": len(set(found)),
                "digest": keys_digest(set(found)),
            }
        if val_fraction is not None and not 0 <= val_fraction < 1:
            raise InputError(f"--val-fraction must be in [0, 1), got {val_fraction}")
        return Inputs((table,), dict.fromkeys(SPLITS, images), options)

    def read(
        self, inputs: Inputs, images: Mapping[Path, frozenset[str]], *, lenient: bool
    ) -> Table:
        path = inputs.sources[0]
        options = inputs.options
        rows = _read_csv(path)
        raw = rows.raw
        if "image" not in raw:
            raise InputError(f"{path}: no `image` column (columns: {', '.join(raw.columns)})")
        n = len(raw)
        present = [c for c in LABEL_COLUMNS if c in raw]
        records = Records(
            [path],
            np.zeros(n, dtype=np.int64),
            rows.line,
            raw[["image", *present]].to_numpy(dtype=object),
            rows.malformed,
            rows.problems,
        )
        image = raw["image"].str.strip().to_numpy(dtype=object)
        absolute_ok = "absolute_images" in options
        refuse_escaping_keys(records, image, allow_absolute=absolute_ok)
        blank = np.flatnonzero(image == "")
        problems = [Problem(0, int(records.line[i]), "empty image path") for i in blank[:1]]
        split_problems, split = _splits(raw, records, options)
        labels = parse_labels(
            records,
            {name: j + 1 for j, name in enumerate(present)},
            lenient=lenient,
            empty_is_missing=True,
            also=[*problems, *split_problems],
        )
        video = _videos(raw, image, options.get("video_column"))
        if split is None:
            split = _val_by_video(video, float(options.get("val_fraction") or 0.0))
        frame = pd.DataFrame(
            {
                "image": image,
                "video": video,
                "frame": _frames(raw, image, video),
                "split": split,
                **missing_labels(n, set(present)),
                **labels.columns,
            }
        )
        if absolute_ok:
            frame["has_image"] = _has_image(image, images[inputs.image_roots["train"]])
        keep = image != ""
        bad_split = split == ""
        return Table(
            frame[keep & ~bad_split].reset_index(drop=True),
            None,
            fixes_for(records, labels.fixed | ~keep | bad_split),
        )


def _find_csv(folder: Path) -> Path:
    if (folder / "labels.csv").exists():
        return folder / "labels.csv"
    tables = sorted(folder.glob("*.csv"))
    if len(tables) != 1:
        raise InputError(f"{folder}: expected labels.csv or exactly one *.csv; pass the CSV itself")
    return tables[0]


@dataclass
class _Rows:
    """The cells of a CSV file as text, with the line number of each row."""

    raw: pd.DataFrame  # one column per header name, cells stripped of leading blanks
    line: np.ndarray  # [n] 1-based line number of each row
    malformed: np.ndarray  # [n] bool: too many fields (only the image is kept)
    problems: list[Problem]


def _read_csv(path: Path) -> _Rows:
    """Every line after the header as a row (blank lines too, so a stray one is located);
    split with the one line splitter every format uses, each line parsed on its own so a
    row's line number is exact."""
    lines = read_lines(path)
    if not lines:
        raise InputError(f"{path} is empty: expected a header line, then one row a line")
    try:
        header = [_column_name(c) for c in _cells(lines[0])]
    except csv.Error as exc:
        raise InputError(f"{path}:1: not a CSV header line: {exc}") from None
    doubled = sorted({c for c in header if header.count(c) > 1})
    if doubled:
        raise InputError(f"{path}: column(s) {', '.join(doubled)} appear more than once")
    body = lines[1:]
    while body and not body[-1].replace(",", "").strip():
        body.pop()  # rows of empty cells at the end (e.g. a spreadsheet's ",,,")
    if not body:
        raise InputError(f"{path} has no rows: only a header line ({lines[0]!r})")
    width = len(header)
    cells, malformed, problems = [], np.zeros(len(body), dtype=bool), []
    for i, line in enumerate(body):
        try:
            row = _cells(line)
        except csv.Error as exc:  # e.g. a lone carriage return inside an unquoted field
            problems.append(Problem(0, i + 2, f"not a CSV line: {exc}"))
            malformed[i] = True
            row = line.split(",", 1)[:1]
        while len(row) > width and not row[-1].strip():
            row.pop()  # trailing commas
        if len(row) > width:
            problems.append(Problem(0, i + 2, f"expected {width} fields, found {len(row)}"))
            malformed[i] = True
            row = row[:1]
        cells.append(row + [""] * (width - len(row)))  # short rows: missing cells
    raw = pd.DataFrame(cells, columns=header, dtype=object)
    return _Rows(raw, np.arange(2, len(body) + 2, dtype=np.int64), malformed, problems)


def _cells(line: str) -> list[str]:
    return next(csv.reader((line,), skipinitialspace=True), [])


def _image_keys(path: Path) -> list[str]:
    raw = _read_csv(path).raw
    return raw["image"].str.strip().tolist() if "image" in raw else []


def _has_image(image: np.ndarray, present: frozenset[str]) -> np.ndarray:
    """Keys found under the image root, or (absolute keys) files that exist."""
    return np.array(
        [os.path.isfile(k) if os.path.isabs(k) else k in present for k in image], dtype=bool
    )


def _splits(
    raw: pd.DataFrame, records: Records, options: Mapping[str, object]
) -> tuple[list[Problem], np.ndarray | None]:
    """The split of each row from the split column ("" where unreadable; None without a
    split column), and the problems found."""
    column = options.get("split_column")
    name = _column_name(str(column)) if column is not None else "split"
    if column is not None and name not in raw:
        raise InputError(f"{records.paths[0]}: no column {column!r} (given with --split-column)")
    if name not in raw:
        return [], None
    if options.get("val_fraction") is not None:
        raise InputError(f"{records.paths[0]} has a {name!r} column: drop --val-fraction")
    text = raw[name].str.strip().str.lower()
    split = text.map(SPLIT_NAMES).fillna("").to_numpy(dtype=object)
    bad = np.flatnonzero(split == "")
    problems = [
        Problem(0, int(records.line[i]), f"split {raw[name].iloc[i]!r}: use train, val or test")
        for i in bad[:1]
    ]
    return problems, split


def _videos(raw: pd.DataFrame, image: np.ndarray, column: object) -> np.ndarray:
    """Video of each row: the named column, else the image's folder, else the image itself."""
    name = _column_name(str(column)) if column is not None else "video"
    if column is not None and name not in raw:
        raise InputError(f"no column {column!r} (given with --video-column)")
    if name in raw:
        return raw[name].str.strip().to_numpy(dtype=object)
    keys = pd.Series(image, dtype="string")
    folder = keys.str.rpartition("/")[0]
    return folder.where(folder != "", keys).to_numpy(dtype=object)


def _frames(raw: pd.DataFrame, image: np.ndarray, video: np.ndarray) -> np.ndarray:
    """The `frame` column, else the number in the file name, else the order within the video."""
    if "frame" in raw:
        values = pd.to_numeric(raw["frame"].str.strip(), errors="coerce")
        if values.notna().all():
            return values.to_numpy(dtype=np.int64)
    stems = pd.Series(image, dtype="string").str.extract(r"(\d+)\.[A-Za-z]+$")[0]
    order = pd.Series(video).groupby(pd.Series(video)).cumcount().to_numpy() + 1
    numbers = pd.to_numeric(stems, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isnan(numbers), order, numbers).astype(np.int64)


def _val_by_video(video: np.ndarray, fraction: float) -> np.ndarray:
    """Deterministic split: a seeded shuffle of the sorted video names, the first share to val."""
    split = np.full(len(video), "train", dtype=object)
    if fraction <= 0:
        return split
    names = np.array(sorted(set(video)), dtype=object)
    shuffled = np.random.default_rng(VAL_SPLIT_SEED).permutation(names)
    n_val = max(1, int(round(fraction * len(names))))
    split[np.isin(video, shuffled[:n_val])] = "val"
    return split
