"""Challenge submission files: the MTL file (ABAW4/ABAW7) and the per-task files (ABAW5+
single file per task, ABAW3 one file per video). Formats: abaw-formats.md §1.6 and §3.5.

Writers take decided outputs (VA floats, expression codes, AU 0/1) in test-list order and
write them atomically; which writers run follows the manifest's test-list style.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from affectpipe.fsutil import write_text_atomic
from affectpipe.schema import MTL_SUBMISSION_HEADER, TASK_HEADERS

TASK_FILE_NAMES = {"va": "VA", "expr": "EXPR", "au": "AU"}
MTL_FILE_NAME = "MTL_predictions.txt"


def format_va(values: np.ndarray) -> list[str]:
    clipped = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0) + 0.0  # no "-0.000000"
    return [f"{v:.6f},{a:.6f}" for v, a in clipped]


def format_expr(codes: np.ndarray) -> list[str]:
    return [str(int(c)) for c in codes]


def format_au(decisions: np.ndarray) -> list[str]:
    return [",".join("1" if x else "0" for x in row) for row in np.asarray(decisions)]


FORMATTERS = {"va": format_va, "expr": format_expr, "au": format_au}


def _write_lines(path: Path, header: str, lines: Sequence[str]) -> Path:
    write_text_atomic(path, "\n".join([header, *lines]) + "\n")
    return path


def write_mtl(
    path: Path, images: Sequence[str], va: np.ndarray, expr: np.ndarray, au: np.ndarray
) -> Path:
    """One line per test-list line, in list order: `image,v,a,expr,au1..au12`."""
    parts = zip(images, format_va(va), format_expr(expr), format_au(au), strict=True)
    return _write_lines(path, MTL_SUBMISSION_HEADER, [",".join(p) for p in parts])


def task_file_header(task: str, list_header: str | None) -> str:
    """The sample file's header when it names this task's outputs, else the usual one."""
    expected = TASK_HEADERS[task].lower().split(",")
    if list_header:
        fields = [f.strip() for f in list_header.strip().split(",")]
        if [f.lower() for f in fields[1:]] == expected:
            return ",".join(fields)
    return f"image_location,{TASK_HEADERS[task]}"


def write_task_file(
    path: Path, task: str, images: Sequence[str], outputs: np.ndarray, list_header: str | None
) -> Path:
    """ABAW5+ single file: header, then `image,<values>` per listed frame, in list order."""
    values = FORMATTERS[task](outputs)
    lines = [f"{image},{v}" for image, v in zip(images, values, strict=True)]
    return _write_lines(path, task_file_header(task, list_header), lines)


def write_video_file(path: Path, task: str, outputs: np.ndarray) -> Path:
    """ABAW3 per-video file: the task header, then one line per frame 1..last."""
    return _write_lines(path, TASK_HEADERS[task], FORMATTERS[task](outputs))
