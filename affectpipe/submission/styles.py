"""Submission styles, each defined once: how a requested file is named, written, validated,
whether its outputs are expanded to every frame of a video and what counts as filled.

Built in (abaw-formats.md §1.6, §3.5): ``mtl`` (one MTL file, ABAW4/ABAW7), ``frame-lines``
(one file per task listing frames, ABAW5+) and ``video-names`` (a folder per task with a file
per video, ABAW3). A data format names the style its test list asks for (the manifest's
`test_list(s)`); blend and `validate-submission` ask this registry. Adding a style = a
`SubmissionStyle` subclass + one `register_style` call (a plugin can do it from outside).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from affectpipe.errors import InputError
from affectpipe.fsutil import write_text_atomic
from affectpipe.manifest import listed_test_rows
from affectpipe.schema import MTL_SUBMISSION_HEADER, TASK_HEADERS, TASKS
from affectpipe.submission import checks
from affectpipe.submission.values import FORMATTERS

TASK_FILE_NAMES = {"va": "VA", "expr": "EXPR", "au": "AU"}


@dataclass(frozen=True)
class Request:
    """One submission the dataset's test list asks for: the tasks it needs, its style name,
    its manifest rows in list order, the test list's header."""

    tasks: tuple[str, ...]
    style: str
    rows: np.ndarray
    header: str | None = None

    @property
    def name(self) -> str:
        return get_style(self.style).file_name(self.tasks)

    def for_task(self, task: str) -> Request:
        """The file of one of this request's tasks, over the same listed rows (written when
        another of its tasks cannot be)."""
        return get_style(self.style).for_task(self, task)


class SubmissionStyle:
    """A kind of submission file (or folder). Outputs passed to `write` are decided outputs
    (VA floats, expression codes, AU 0/1) by task: in test-list order, or, for a
    `per_video` style, {video: outputs for frames 1..last}."""

    name: str = ""
    holds_all_tasks = False  # one file answers every task (else one request per task)
    per_video = False  # blend expands outputs to every frame of each test video
    # Listed frames without an image file count as unfilled (the test list names the frames
    # to predict); an MTL list may name frames without a face image.
    lists_imageless_frames = True

    def file_name(self, tasks: tuple[str, ...]) -> str:
        raise NotImplementedError

    def for_task(self, request: Request, task: str) -> Request:
        return replace(request, tasks=(task,))

    def write(
        self, out_dir: Path, request: Request, images: np.ndarray, outputs: Mapping[str, Any]
    ) -> list[Path]:
        raise NotImplementedError

    def recognises(self, path: Path) -> bool:
        """Whether `path` looks like a submission of this style (for validation)."""
        raise NotImplementedError

    def tasks_of(self, path: Path) -> tuple[str, ...] | None:
        """The tasks a submission of this style holds, read from it (None: unrecognised)."""
        raise NotImplementedError

    def validate(
        self,
        path: Path,
        manifest: pd.DataFrame,
        metadata: Mapping[str, Any] | None,
        tasks: tuple[str, ...] | None,
    ) -> list[tuple[str, checks.Problem]]:
        """(file name, problem) pairs of the submission `path` against the test list."""
        raise NotImplementedError

    def value_rows(self, path: Path) -> list[list[str]]:
        """The value fields of every data line."""
        raise NotImplementedError


def _write_lines(path: Path, header: str, lines: Sequence[str]) -> Path:
    write_text_atomic(path, "\n".join([header, *lines]) + "\n")
    return path


def task_file_header(task: str, list_header: str | None) -> str:
    """The sample file's header when it names this task's outputs, else the usual one."""
    expected = TASK_HEADERS[task].lower().split(",")
    if list_header:
        fields = [f.strip() for f in list_header.strip().split(",")]
        if [f.lower() for f in fields[1:]] == expected:
            return ",".join(fields)
    return f"image_location,{TASK_HEADERS[task]}"


def _first_line(path: Path) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.readline().rstrip("\r\n")


class _SingleFile(SubmissionStyle):
    """A file listing the test list's images, one line each, in list order."""

    def recognises(self, path: Path) -> bool:
        return path.is_file() and self.tasks_of(path) is not None

    def validate(
        self,
        path: Path,
        manifest: pd.DataFrame,
        metadata: Mapping[str, Any] | None,
        tasks: tuple[str, ...] | None,
    ) -> list[tuple[str, checks.Problem]]:
        tasks = tasks or self.tasks_of(path)
        problems = checks.validate_file(path, manifest, tasks, metadata)
        return [(path.name, p) for p in problems]

    def value_rows(self, path: Path) -> list[list[str]]:
        return checks.file_value_rows(path)


class MtlStyle(_SingleFile):
    name = "mtl"
    holds_all_tasks = True
    lists_imageless_frames = False

    def file_name(self, tasks: tuple[str, ...]) -> str:
        return "MTL_predictions.txt"

    def for_task(self, request: Request, task: str) -> Request:
        # Without one task, the others go into their own per-task files.
        return Request((task,), FrameLinesStyle.name, request.rows, None)

    def write(
        self, out_dir: Path, request: Request, images: np.ndarray, outputs: Mapping[str, Any]
    ) -> list[Path]:
        listed = images[request.rows].tolist()
        columns = [FORMATTERS[t](outputs[t]) for t in TASKS]
        lines = [",".join(parts) for parts in zip(listed, *columns, strict=True)]
        return [_write_lines(out_dir / self.file_name(request.tasks), MTL_SUBMISSION_HEADER, lines)]

    def tasks_of(self, path: Path) -> tuple[str, ...] | None:
        return TASKS if _first_line(path) == MTL_SUBMISSION_HEADER else None


class FrameLinesStyle(_SingleFile):
    name = "frame-lines"

    def file_name(self, tasks: tuple[str, ...]) -> str:
        return f"{TASK_FILE_NAMES[tasks[0]]}_predictions.txt"

    def write(
        self, out_dir: Path, request: Request, images: np.ndarray, outputs: Mapping[str, Any]
    ) -> list[Path]:
        task = request.tasks[0]
        values = FORMATTERS[task](outputs[task])
        listed = images[request.rows].tolist()
        lines = [f"{image},{v}" for image, v in zip(listed, values, strict=True)]
        path = out_dir / self.file_name(request.tasks)
        return [_write_lines(path, task_file_header(task, request.header), lines)]

    def tasks_of(self, path: Path) -> tuple[str, ...] | None:
        task = checks.header_task(_first_line(path).split(",")[1:])
        return (task,) if task else None


class VideoNamesStyle(SubmissionStyle):
    name = "video-names"
    per_video = True

    def file_name(self, tasks: tuple[str, ...]) -> str:
        return f"{TASK_FILE_NAMES[tasks[0]]}/"

    def write(
        self, out_dir: Path, request: Request, images: np.ndarray, outputs: Mapping[str, Any]
    ) -> list[Path]:
        task = request.tasks[0]
        folder = out_dir / self.file_name(request.tasks)
        return [
            _write_lines(folder / f"{video}.txt", TASK_HEADERS[task], FORMATTERS[task](values))
            for video, values in outputs[task].items()
        ]

    def recognises(self, path: Path) -> bool:
        return path.is_dir()

    def tasks_of(self, path: Path) -> tuple[str, ...] | None:
        task = checks.folder_task(path)
        return (task,) if task else None

    def validate(
        self,
        path: Path,
        manifest: pd.DataFrame,
        metadata: Mapping[str, Any] | None,
        tasks: tuple[str, ...] | None,
    ) -> list[tuple[str, checks.Problem]]:
        return checks.validate_video_folder(path, manifest, tasks[0] if tasks else None, metadata)

    def value_rows(self, path: Path) -> list[list[str]]:
        return checks.folder_value_rows(path)


STYLES: dict[str, SubmissionStyle] = {}


def register_style(style: SubmissionStyle) -> SubmissionStyle:
    """Register a style under its `name` (what a data format's test list names)."""
    if not style.name:
        raise ValueError("a submission style needs a name")
    STYLES[style.name] = style
    return style


def get_style(name: str) -> SubmissionStyle:
    """The registered style `name`; InputError (exit 2) for another name, which a manifest's
    test list or a dataset format may carry."""
    if name not in STYLES:
        raise InputError(f"unknown submission style {name!r} (registered: {', '.join(STYLES)})")
    return STYLES[name]


def detect_style(path: Path) -> SubmissionStyle | None:
    """The registered style a submission at `path` looks like (None: none does)."""
    return next((s for s in STYLES.values() if s.recognises(Path(path))), None)


for _style in (MtlStyle(), FrameLinesStyle(), VideoNamesStyle()):
    register_style(_style)


def requested_submissions(
    manifest: pd.DataFrame, metadata: Mapping[str, Any], labelled_tasks: Sequence[str]
) -> list[Request]:
    """The files the dataset's test list(s) ask for.

    Per-task lists (`test_lists`, one dataset for the three Aff-Wild2 tasks): one file per
    listed task. A list of all tasks (an MTL style's): one file. A per-task format's list
    (`abaw-va`, ...): that task's file. Test rows without a declared list: one file per task
    with training labels.
    """
    test_lists = metadata.get("test_lists")
    if test_lists:
        return [
            Request(
                (task,),
                test_lists[task].get("style") or FrameLinesStyle.name,
                listed_test_rows(manifest, metadata, task),
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
    style = test_list.get("style") or (MtlStyle.name if fmt == "abaw-mtl" else FrameLinesStyle.name)
    header = test_list.get("header")
    if get_style(style).holds_all_tasks:
        return [Request(TASKS, style, rows, header)]
    format_task = fmt.removeprefix("abaw-")
    tasks = [format_task] if format_task in TASKS else [t for t in TASKS if t in labelled_tasks]
    return [Request((task,), style, rows, header) for task in tasks]
