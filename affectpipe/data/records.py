"""Comma-separated annotation lines -> a table of text fields that remembers file and line.

Every reader turns its files into `Records`; label parsing (`affectpipe.data.labels`) then
works on whole columns at once and can still name the file and line of any bad value.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from affectpipe.errors import AnnotationError, InputError
from affectpipe.fsutil import file_kind

# `<folder>/<digits>.<ext>`: the image keys of the ABAW files.
_FRAME_KEY = re.compile(r"^(?P<video>.+)/(?P<stem>\d+)\.[A-Za-z]+$")


def check_regular_file(path: Path) -> None:
    """Refuse anything but a readable regular file before it is opened for reading or hashed.

    A FIFO would block `open` forever and a directory fails with an OS error deep inside a
    reader, so both are stopped here, with the path named (exit 2).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    kind = file_kind(mode)
    if kind is not None:
        raise InputError(f"{path} is {kind}: expected an annotation file")
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None


def text_lines(text: str) -> list[str]:
    """`text` split on "\n" only ("\r\n" tolerated), without trailing blank lines.

    Not `str.splitlines`: it also splits on form feeds, NEL (U+0085), U+2028 and lone "\r",
    which would shift every later line number (and, per video, every later frame's labels).
    """
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (BOM stripped; see `text_lines`)."""
    check_regular_file(path)
    try:
        # newline="": no universal-newline translation, so a lone "\r" stays inside its line.
        with open(path, encoding="utf-8-sig", newline="") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    return text_lines(text)


def looks_like_image_path(text: str) -> bool:
    """True for `folder/00001.jpg`-like text; used to tell a header line from a data line."""
    first = text.split(",", 1)[0].strip()
    return "/" in first or first.lower().endswith((".jpg", ".jpeg", ".png", ".bmp"))


@dataclass
class Problem:
    """A located defect: index of the file in `Records.paths`, 1-based line, message."""

    file: int
    line: int
    message: str


@dataclass
class Records:
    """Rows of text fields from one or more files, with the file index and line of each."""

    paths: list[Path]
    file: np.ndarray  # [n] int index into paths
    line: np.ndarray  # [n] 1-based line number
    fields: np.ndarray  # [n, k] object array of strings
    malformed: np.ndarray  # [n] bool: wrong field count (fields after the first are blank)
    problems: list[Problem] = field(default_factory=list)  # what was wrong with those rows

    def __len__(self) -> int:
        return len(self.line)

    def column(self, j: int) -> np.ndarray:
        return self.fields[:, j]

    @classmethod
    def concat(cls, parts: list[Records]) -> Records:
        """One table from several, re-indexing the files (all parts have the same width)."""
        paths: list[Path] = []
        files, problems = [], []
        for part in parts:
            offset = len(paths)
            paths.extend(part.paths)
            files.append(part.file + offset)
            problems.extend(Problem(p.file + offset, p.line, p.message) for p in part.problems)
        return cls(
            paths,
            np.concatenate(files),
            np.concatenate([p.line for p in parts]),
            np.concatenate([p.fields for p in parts]),
            np.concatenate([p.malformed for p in parts]),
            problems,
        )


def split_lines(
    path: Path, lines: list[str], n_fields: int, *, first_line: int = 1, keep_blank: bool = False
) -> Records:
    """Split `lines` (line `first_line` of `path` first) into exactly `n_fields` fields.

    A trailing comma (an empty last field beyond `n_fields`) is tolerated. Lines with another
    field count become a `Problem` and keep only their first field; blank lines are skipped
    unless `keep_blank` (per-video files, where the line number is the frame number).
    """
    split = [ln.split(",") for ln in lines]
    numbers = np.arange(first_line, first_line + len(lines), dtype=np.int64)
    if all(len(parts) == n_fields for parts in split):  # the usual case, without a loop
        table = np.empty((len(split), n_fields), dtype=object)
        if split:
            table[:] = split
        n = len(split)
        return Records([path], np.zeros(n, np.int64), numbers, table, np.zeros(n, bool))
    keep = np.ones(len(lines), dtype=bool)
    malformed: list[bool] = []
    problems: list[Problem] = []
    rows: list[list[str]] = []
    blank = [""] * n_fields
    for i, parts in enumerate(split):
        if len(parts) == n_fields + 1 and not parts[-1].strip():
            parts = parts[:-1]
        if len(parts) == n_fields:
            rows.append(parts)
            malformed.append(False)
            continue
        if len(parts) == 1 and not parts[0].strip():
            if not keep_blank:
                keep[i] = False
                continue
            problems.append(Problem(0, int(numbers[i]), "empty line"))
        else:
            problems.append(
                Problem(0, int(numbers[i]), f"expected {n_fields} fields, found {len(parts)}")
            )
        rows.append([parts[0], *blank[1:]])  # keep the key: lenient mode keeps the row
        malformed.append(True)
    table = np.empty((len(rows), n_fields), dtype=object)
    if rows:
        table[:] = rows
    return Records(
        [path],
        np.zeros(len(rows), dtype=np.int64),
        numbers[keep],
        table,
        np.array(malformed, dtype=bool),
        problems,
    )


def first_field(path: Path, lines: list[str], *, first_line: int = 1) -> Records:
    """The text before the first comma of each non-blank line (test lists): a 1-field table."""
    keys = [ln.split(",", 1)[0].strip() for ln in lines]
    numbers = np.arange(first_line, first_line + len(lines), dtype=np.int64)
    keep = np.array([bool(k) for k in keys], dtype=bool)
    table = np.empty((int(keep.sum()), 1), dtype=object)
    table[:, 0] = [k for k, ok in zip(keys, keep, strict=True) if ok]
    n = len(table)
    return Records(
        [path], np.zeros(n, dtype=np.int64), numbers[keep], table, np.zeros(n, dtype=bool)
    )


def raise_first(records: Records, problems: list[Problem]) -> None:
    """Raise an AnnotationError for the earliest problem (file order, then line), if any."""
    if not problems:
        return
    first = min(problems, key=lambda p: (p.file, p.line))
    raise AnnotationError(records.paths[first.file], first.line, first.message)


def refuse_escaping_keys(
    records: Records, image: np.ndarray, *, allow_absolute: bool = False
) -> None:
    """Raise an AnnotationError at the first image key that leaves its image root.

    Lexical check (no file system access): an absolute key, or one whose normalised form
    climbs out with "..", could make the tool read any file (`../../etc/x.jpg`, a sibling
    folder of the root). Symlinks inside the dataset are the user's own. Raised even in
    lenient mode: such a key is not a malformed label but a file outside the dataset.
    """
    joined = "\n" + "\n".join(image.tolist())
    if ".." not in joined and "\n/" not in joined:  # the usual case, millions of plain keys
        return
    suspects = [i for i, key in enumerate(image) if ".." in key or os.path.isabs(key)]
    for i in suspects:
        key = str(image[i])
        if os.path.isabs(key):
            if allow_absolute:
                continue
            why = "absolute image paths are refused: make keys relative to the image root"
        else:
            normal = posixpath.normpath(key.replace("\\", "/"))
            if normal != ".." and not normal.startswith("../"):
                continue
            why = "the image key leaves the image root"
        path = records.paths[records.file[i]]
        raise AnnotationError(path, int(records.line[i]), f"{why}: {key!r}")


@dataclass
class FrameKeys:
    """Image keys checked for the `<video>/<frame>.jpg` form.

    `keep` drops rows without a key (only ever false in lenient mode); `fixed` marks kept
    rows whose key has another form (frame -1, lenient mode).
    """

    image: np.ndarray  # [n] object
    video: np.ndarray  # [n] object
    frame: np.ndarray  # [n] int64, -1 where the stem is not a number
    keep: np.ndarray  # [n] bool
    fixed: np.ndarray  # [n] bool
    problems: list[Problem]


def frame_keys(records: Records, j: int = 0) -> FrameKeys:
    """Check field `j` of every row as an ABAW image key and split it into video and frame."""
    image = np.array([k.strip() for k in records.column(j)], dtype=object)
    refuse_escaping_keys(records, image)
    matches = [_FRAME_KEY.match(k) for k in image]
    empty = image == ""
    odd = np.array([m is None for m in matches], dtype=bool) & ~empty
    problems = [
        Problem(
            int(records.file[i]),
            int(records.line[i]),
            f"not an image key of the form '<video>/<frame>.jpg': {image[i]!r}",
        )
        for i in np.flatnonzero(odd | (empty & ~records.malformed))[:1]
    ]
    video = np.array(
        [m["video"] if m else k.rpartition("/")[0] for m, k in zip(matches, image, strict=True)],
        dtype=object,
    )
    frame = np.array([int(m["stem"]) if m else -1 for m in matches], dtype=np.int64)
    return FrameKeys(image, video, frame, ~empty, odd, problems)
