"""Import real OpenFace 2.x output (CSV files) as the feature file of backbone `openface-csv`.

Two flavours are read (see the specs' abaw-formats.md §5):

- FeatureExtraction run with `-fdir <folder>`: one `<openface_dir>/<folder>.csv` per image
  folder, one row per image (`frame` 1, 2, ... in the lexicographically sorted order of the
  folder's file names with extension .jpg .jpeg .png .bmp, case-sensitive), `success` 0 when
  no face was tracked. Row k maps to the k-th sorted file name, never to the number in it.
- FaceLandmarkImg: `<openface_dir>/<folder>/<image stem>.csv` per image, one row per
  detected face (`face` 0, 1, ...); no file when no face was found. We keep the face with
  the highest `confidence` (face 0 on ties).

A folder CSV takes precedence over per-image CSVs. Header names and fields are stripped
(OpenFace <= 2.2 writes ", " separators, later versions ","); `nan`, `-nan`, `-nan(ind)`
read as NaN.

Embedding layout: the blocks below that every CSV read has, in this order:
`au_r` (17 intensities AU01_r..AU45_r, 0-5), `au_c` (18 presences AU01_c..AU45_c, 0/1),
`pose` (pose_Tx, pose_Ty, pose_Tz in mm; pose_Rx, pose_Ry, pose_Rz in radians), `gaze`
(gaze_0_x..gaze_1_z, gaze_angle_x, gaze_angle_y), `landmarks` (x_0..x_67, y_0..y_67, image
pixels). Group `au` spans `au_r` and `au_c`. OpenFace has no AU24 at all (and AU28 only as
a presence), so ABAW's AU24 must be learned from the other columns. There are no logits.

An image is ok when a row was found for it with `success` 1 (FeatureExtraction) or a face
(FaceLandmarkImg) and its selected values are all numbers; other rows are zeros.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from affectpipe.errors import AnnotationError, InputError
from affectpipe.features import write_feature_file
from affectpipe.fsutil import sha256_file

BACKBONE = "openface-csv"
# Extensions OpenFace's image-sequence reader accepts (case-sensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
SEPARATOR_NAMES = {", ": "comma-space", ",": "comma"}
# Lower-cased; Python's float() already reads "nan" and "-nan", MSVC prints "-nan(ind)".
NAN_SPELLINGS = ("nan", "-nan", "nan(ind)", "-nan(ind)")

AU_R_NUMBERS = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
AU_C_NUMBERS = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 28, 45)
BLOCKS: dict[str, tuple[str, ...]] = {
    "au_r": tuple(f"AU{n:02d}_r" for n in AU_R_NUMBERS),
    "au_c": tuple(f"AU{n:02d}_c" for n in AU_C_NUMBERS),
    "pose": ("pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"),
    "gaze": (
        *(f"gaze_{eye}_{axis}" for eye in (0, 1) for axis in "xyz"),
        "gaze_angle_x",
        "gaze_angle_y",
    ),
    "landmarks": (*(f"x_{i}" for i in range(68)), *(f"y_{i}" for i in range(68))),
}


@dataclass
class OpenFaceTable:
    """One parsed OpenFace CSV: the rows kept (one per frame or image) and what it offers."""

    path: Path
    flavour: str  # "sequence" (FeatureExtraction) or "image" (FaceLandmarkImg)
    blocks: tuple[str, ...]
    key: np.ndarray  # [R] frame number (sequence) or 0 (image)
    success: np.ndarray  # [R] bool
    values: dict[str, np.ndarray]  # block -> [R, width] float64
    separator: str  # ", " or ","


def _parse_number(path: Path, line: int, column: str, field: str) -> float:
    try:
        return float(field)
    except ValueError:
        if field.strip().lower() in NAN_SPELLINGS:
            return float("nan")
        raise AnnotationError(path, line, f"column {column}: {field!r} is not a number") from None


def _parse_rows(path: Path, lines: list[str], header: list[str], wanted: list[str]) -> np.ndarray:
    """The `wanted` columns of the data lines as float64 [rows, len(wanted)]."""
    columns = [header.index(name) for name in wanted]
    rows = []
    for number, line in enumerate(lines, start=2):
        fields = line.split(",")
        if len(fields) != len(header):
            raise AnnotationError(
                path, number, f"{len(fields)} fields where the header has {len(header)}"
            )
        rows.append([fields[k] for k in columns])
    if not rows:
        return np.zeros((0, len(wanted)))
    try:  # fast path: numpy parses the strings (surrounding spaces allowed)
        return np.array(rows, dtype=str).astype(np.float64)
    except ValueError:  # NaN spellings such as -nan(ind), or a bad field to report
        return np.array(
            [
                [_parse_number(path, number, wanted[j], field) for j, field in enumerate(row)]
                for number, row in enumerate(rows, start=2)
            ]
        )


def read_openface_csv(path: Path) -> OpenFaceTable:
    """Parse one OpenFace CSV; raises AnnotationError naming file and line when malformed."""
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise AnnotationError(path, 1, "empty file, expected an OpenFace CSV header")
    header = [name.strip() for name in lines[0].split(",")]
    if "frame" in header and "success" in header:
        flavour, meta = "sequence", ["frame", "success"]
    elif "face" in header:
        flavour, meta = "image", ["face"]
    else:
        raise AnnotationError(
            path, 1, "not an OpenFace CSV: the header has neither frame+success nor face"
        )
    if "confidence" in header:
        meta.append("confidence")
    blocks = tuple(name for name, cols in BLOCKS.items() if set(cols) <= set(header))
    wanted = meta + [c for block in blocks for c in BLOCKS[block]]
    table = _parse_rows(path, lines[1:], header, wanted)
    numbers = dict(zip(wanted, table.T, strict=True))
    n = len(table)
    confidence = numbers.get("confidence", np.zeros(n))
    key = numbers["frame"] if flavour == "sequence" else np.zeros(n)
    success = numbers["success"] == 1 if flavour == "sequence" else np.ones(n, dtype=bool)

    # Several faces per frame (FaceLandmarkImg, FaceLandmarkVidMulti): keep the successful
    # one with the highest confidence; a stable sort keeps the first face on ties.
    order = np.lexsort((-confidence, ~success, key))
    first_of_key = np.ones(len(order), dtype=bool)
    first_of_key[1:] = key[order][1:] != key[order][:-1]
    keep = order[first_of_key]
    values = {block: np.column_stack([numbers[c][keep] for c in BLOCKS[block]]) for block in blocks}
    separator = ", " if ", " in lines[0] else ","
    return OpenFaceTable(path, flavour, blocks, key[keep], success[keep], values, separator)


def _sorted_folder_images(folder: Path) -> list[str]:
    """File names OpenFace's -fdir reader takes from `folder`, in its (sorted) order."""
    names = [n for n in os.listdir(folder) if n.endswith(IMAGE_EXTENSIONS)]
    return sorted(names)


def _locate_rows(
    images: Sequence[str], image_paths: Sequence[str | None], openface_dir: Path, progress: bool
) -> tuple[list[tuple[OpenFaceTable, int] | None], list[OpenFaceTable]]:
    """For each image, the table and row holding its OpenFace output (None when absent)."""
    located: list[tuple[OpenFaceTable, int] | None] = [None] * len(images)
    tables: list[OpenFaceTable] = []
    folders: dict[Path, list[int]] = {}
    for i, path in enumerate(image_paths):
        if path is not None:
            folders.setdefault(Path(path).parent, []).append(i)

    disable = None if progress else True  # None: bars only on a terminal
    for folder, members in tqdm(
        folders.items(), desc="openface folder CSVs", unit="folder", disable=disable, leave=False
    ):
        csv_path = openface_dir / f"{folder.name}.csv"
        if not csv_path.is_file() or not folder.is_dir():
            continue
        table = read_openface_csv(csv_path)
        if table.flavour != "sequence":
            raise InputError(f"{csv_path}: expected FeatureExtraction output (frame, success)")
        tables.append(table)
        listing = _sorted_folder_images(folder)
        if len(table.key) and table.key.max() > len(listing):
            raise InputError(
                f"{csv_path} has frame {int(table.key.max())} but {folder} holds only "
                f"{len(listing)} images ({' '.join(IMAGE_EXTENSIONS)}): the folder changed "
                "since OpenFace ran, so its rows cannot be matched to images"
            )
        row_of_frame = {int(frame): row for row, frame in enumerate(table.key)}
        position = {name: k + 1 for k, name in enumerate(listing)}
        for i in members:
            row = row_of_frame.get(position.get(Path(image_paths[i]).name, -1))
            if row is not None:
                located[i] = (table, row)

    unmatched = [i for i, where in enumerate(located) if where is None]
    for i in tqdm(
        unmatched, desc="openface image CSVs", unit="image", disable=disable, leave=False
    ):
        image = images[i]
        csv_path = openface_dir / Path(image).with_suffix(".csv")
        if csv_path.is_file():
            table = read_openface_csv(csv_path)
            tables.append(table)
            located[i] = (table, 0)
    return located, tables


def import_openface_csv(
    images: Sequence[str],
    image_paths: Sequence[str | None],
    openface_dir: Path,
    out_path: Path,
    attrs: dict,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the complete `openface-csv` feature file for `images` from OpenFace CSVs.

    `images` are the manifest's distinct image keys (feature-file row order) and
    `image_paths` their files (None when absent). Returns a summary of what was matched.
    """
    openface_dir = Path(openface_dir)
    if not openface_dir.is_dir():
        raise InputError(f"OpenFace output folder {openface_dir} does not exist")
    if len(images) != len(image_paths):
        raise ValueError("images and image_paths must have the same length")
    located, tables = _locate_rows(images, image_paths, openface_dir, progress)
    if not tables:
        raise InputError(
            f"no OpenFace CSV in {openface_dir} matches the dataset's images: expected "
            "<folder>.csv (FeatureExtraction -fdir) or <folder>/<image stem>.csv "
            "(FaceLandmarkImg)"
        )
    blocks = [b for b in BLOCKS if all(b in table.blocks for table in tables)]
    if not blocks:
        raise InputError(
            f"the OpenFace CSVs in {openface_dir} share no complete block of AU, pose, gaze "
            "or landmark columns: rerun OpenFace with -aus (and -pose -gaze -2Dfp)"
        )
    groups: dict[str, list[int]] = {}
    start = 0
    for block in blocks:
        groups[block] = [start, start + len(BLOCKS[block])]
        start += len(BLOCKS[block])
    au_blocks = [groups[b] for b in ("au_r", "au_c") if b in groups]
    if au_blocks:
        groups["au"] = [au_blocks[0][0], au_blocks[-1][1]]

    embedding = np.zeros((len(images), start), dtype=np.float32)
    ok = np.zeros(len(images), dtype=bool)
    counts = {"no_output": 0, "no_face": 0, "nan_values": 0}
    for i, where in enumerate(located):
        if where is None:
            counts["no_output"] += 1
            continue
        table, row = where
        if not table.success[row]:
            counts["no_face"] += 1
            continue
        values = np.concatenate([table.values[block][row] for block in blocks])
        if not np.isfinite(values).all():
            counts["nan_values"] += 1
            continue
        embedding[i] = values
        ok[i] = True

    sources = sorted({table.path for table in tables})
    fingerprint = hashlib.sha256()
    for path in sources:
        fingerprint.update(f"{path.relative_to(openface_dir)}:{sha256_file(path)}\n".encode())
    # Plain strings: only a few attrs are decoded from JSON by readers.
    separators = "+".join(sorted({SEPARATOR_NAMES[table.separator] for table in tables}))
    flavours = "+".join(sorted({table.flavour for table in tables}))
    write_feature_file(
        out_path,
        np.asarray(images, dtype=object),
        embedding,
        ok,
        {
            "openface_dir": str(openface_dir),
            "openface_csv_files": len(sources),
            "openface_csv_sha256": fingerprint.hexdigest(),
            "openface_separators": separators,
            "openface_flavours": flavours,
            **attrs,  # the caller's provenance wins (e.g. its resolved openface_dir)
            "backbone": BACKBONE,
            "logit_names": [],
            "groups": groups,
        },
    )
    return {
        "images": len(images),
        "ok": int(ok.sum()),
        **counts,
        "csv_files": len(sources),
        "flavours": flavours,
        "separators": separators,
        "blocks": ",".join(blocks),
    }
