"""Challenge submission files: the MTL file (ABAW4/ABAW7) and the per-task files (ABAW5+
single file per task, ABAW3 one file per video). Formats: abaw-formats.md §1.6 and §3.5.

`requested_submissions` reads from the manifest which files its test list(s) ask for (one
`Request` per file or folder); `STYLES` maps each test-list style to its writer. Writers
take decided outputs (VA floats, expression codes, AU 0/1) in test-list order and write
them atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectpipe.fsutil import write_text_atomic
from affectpipe.schema import MTL_SUBMISSION_HEADER, TASK_HEADERS, TASKS

TASK_FILE_NAMES = {"va": "VA", "expr": "EXPR", "au": "AU"}
MTL_FILE_NAME = "MTL_predictions.txt"


def format_va(values: np.ndarray) -> list[str]:
    clipped = np.clip(np.asarray(values, dtype=np.float64), -1.0, 1.0) + 0.0  # no "-0.000000"
    return [f"{v:.6f},{a:.6f}" for v, a in clipped.tolist()]


def format_expr(codes: np.ndarray) -> list[str]:
    return [str(c) for c in np.asarray(codes).astype(np.int64).tolist()]


def format_au(decisions: np.ndarray) -> list[str]:
    """`0,1,...` per row: each row's flags are read as one binary number that indexes the
    2**n_au possible lines, so a million rows cost a lookup each, not a join."""
    flags = np.asarray(decisions) != 0
    n_au = flags.shape[1]
    codes = flags.astype(np.int64) @ (1 << np.arange(n_au - 1, -1, -1))
    table = [",".join(format(code, f"0{n_au}b")) for code in range(1 << n_au)]
    return [table[code] for code in codes.tolist()]


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


@dataclass(frozen=True)
class Request:
    """One submission the dataset's test list asks for: the tasks it needs, its style
    ("mtl", "frame-lines" or "video-names"), its manifest rows in list order, its header."""

    tasks: tuple[str, ...]
    style: str
    rows: np.ndarray
    header: str | None = None

    @property
    def name(self) -> str:
        if self.style == "mtl":
            return MTL_FILE_NAME
        task = TASK_FILE_NAMES[self.tasks[0]]
        return f"{task}/" if self.style == "video-names" else f"{task}_predictions.txt"

    def for_task(self, task: str) -> Request:
        """The per-task file of one of this request's tasks, over the same listed rows."""
        style = "frame-lines" if self.style == "mtl" else self.style
        header = None if self.style == "mtl" else self.header
        return Request((task,), style, self.rows, header)


def task_test_rows(manifest: pd.DataFrame, metadata: Mapping[str, Any], task: str) -> np.ndarray:
    """Manifest rows of `task`'s test list, in list order (its own block with `test_lists`)."""
    test_lists = metadata.get("test_lists")
    if test_lists:
        entry = test_lists.get(task)
        return np.arange(*entry["rows"], dtype=np.int64) if entry else np.zeros(0, np.int64)
    return np.flatnonzero((manifest["split"] == "test").to_numpy())


def requested_submissions(
    manifest: pd.DataFrame, metadata: Mapping[str, Any], labelled_tasks: Sequence[str]
) -> list[Request]:
    """The files the dataset's test list(s) ask for.

    Per-task lists (`test_lists`, one dataset for the three Aff-Wild2 tasks): one file per
    listed task. An MTL list: the MTL file. A per-task format's list (`abaw-va`, ...): that
    task's file. Test rows without a declared list: one file per task with training labels.
    """
    test_lists = metadata.get("test_lists")
    if test_lists:
        return [
            Request(
                (task,),
                test_lists[task].get("style") or "frame-lines",
                task_test_rows(manifest, metadata, task),
                test_lists[task].get("header"),
            )
            for task in TASKS
            if task in test_lists
        ]
    rows = np.flatnonzero((manifest["split"] == "test").to_numpy())
    if not len(rows):
        return []
    test_list = metadata.get("test_list") or {}
    fmt = str(metadata.get("format", ""))
    style = test_list.get("style") or ("mtl" if fmt == "abaw-mtl" else "frame-lines")
    header = test_list.get("header")
    if style == "mtl":
        return [Request(TASKS, "mtl", rows, header)]
    format_task = fmt.removeprefix("abaw-")
    tasks = [format_task] if format_task in TASKS else [t for t in TASKS if t in labelled_tasks]
    return [Request((task,), style, rows, header) for task in tasks]


def _write_mtl_request(
    out_dir: Path, request: Request, images: np.ndarray, outputs: Mapping[str, Any]
) -> list[Path]:
    va, expr, au = (outputs[t] for t in TASKS)
    return [write_mtl(out_dir / request.name, images[request.rows].tolist(), va, expr, au)]


def _write_frame_lines(
    out_dir: Path, request: Request, images: np.ndarray, outputs: Mapping[str, Any]
) -> list[Path]:
    task = request.tasks[0]
    path = out_dir / request.name
    listed = images[request.rows].tolist()
    return [write_task_file(path, task, listed, outputs[task], request.header)]


def _write_video_names(
    out_dir: Path, request: Request, images: np.ndarray, outputs: Mapping[str, Any]
) -> list[Path]:
    task = request.tasks[0]
    folder = out_dir / request.name
    return [
        write_video_file(folder / f"{video}.txt", task, values)
        for video, values in outputs[task].items()
    ]


# style -> writer(out_dir, request, manifest images, outputs by task) -> files written.
# "video-names" outputs are {video: outputs for frames 1..last}; the others, list order.
Writer = Callable[[Path, Request, np.ndarray, Mapping[str, Any]], list[Path]]
STYLES: dict[str, Writer] = {
    "mtl": _write_mtl_request,
    "frame-lines": _write_frame_lines,
    "video-names": _write_video_names,
}
