"""Check a submission file against a dataset's test list, reporting every problem by line.

Besides problems (the file is invalid), warnings: value columns that never change, and a
file that differs from what the blend.json that wrote it recorded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from affectpipe.fsutil import sha256_file
from affectpipe.manifest import listed_test_rows
from affectpipe.schema import MTL_SUBMISSION_HEADER, TASK_HEADERS, TASKS
from affectpipe.submission.values import check_values, field_names


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based line number in the file (0: the file as a whole)
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


def header_task(fields: list[str]) -> str | None:
    """The task whose value names `fields` (a header without its image field) are."""
    names = [f.strip().lower() for f in fields]
    return next((t for t, h in TASK_HEADERS.items() if names == h.lower().split(",")), None)


def _header(tasks: tuple[str, ...]) -> str:
    if tasks == TASKS:
        return MTL_SUBMISSION_HEADER
    return f"image_location,{TASK_HEADERS[tasks[0]]}"


def _tasks_of_header(header: str) -> tuple[str, ...] | None:
    if header == MTL_SUBMISSION_HEADER:
        return TASKS
    task = header_task(header.split(",")[1:])
    return (task,) if task else None


def validate_lines(
    lines: list[str], expected_images: list[str], tasks: tuple[str, ...] | None
) -> list[Problem]:
    """Problems of a submission given as text lines (without line ends) holding `tasks`'
    values (None: read from the header)."""
    if not lines:
        return [Problem(0, "the file is empty")]
    header = lines[0]
    detected = _tasks_of_header(header)
    problems: list[Problem] = []
    if tasks is None:
        if detected is None:
            return [Problem(1, f"unrecognised header {header!r}; pass --format")]
        tasks = detected
    elif detected != tasks:
        expected = _header(tasks)
        problems.append(
            Problem(1, f"header {header!r} does not match format {_kind(tasks)} ({expected})")
        )
    n_values = len(field_names(tasks))
    data = lines[1:]
    for index, line in enumerate(data):
        number = index + 2
        fields = line.split(",")
        if index < len(expected_images) and fields[0] != expected_images[index]:
            problems.append(
                Problem(
                    number,
                    f"image {fields[0]!r} where the test list has {expected_images[index]!r}",
                )
            )
        if len(fields) != n_values + 1:
            problems.append(Problem(number, f"{len(fields)} fields, expected {n_values + 1}"))
            continue
        problems += [Problem(number, m) for m in check_values(tasks, fields[1:])]
    if len(data) < len(expected_images):
        problems.append(
            Problem(
                len(lines) + 1,
                f"{len(expected_images) - len(data)} line(s) missing: the "
                f"test list has {len(expected_images)} entries, the file {len(data)}",
            )
        )
    elif len(data) > len(expected_images):
        problems.append(
            Problem(
                len(expected_images) + 2,
                f"{len(data) - len(expected_images)} extra "
                f"line(s) beyond the {len(expected_images)} test-list entries",
            )
        )
    return problems


def _kind(tasks: tuple[str, ...]) -> str:
    """The `--format` name of a submission holding `tasks`: mtl, or the task."""
    return "mtl" if tasks == TASKS else tasks[0]


def _listed(
    manifest: pd.DataFrame, metadata: Mapping[str, Any] | None, tasks: tuple[str, ...] | None
):
    """Manifest rows of the test list a submission of `tasks` answers (per-task lists of one
    dataset: that task's rows)."""
    task = tasks[0] if tasks and len(tasks) == 1 else None
    if task and metadata and metadata.get("test_lists"):
        return manifest.iloc[listed_test_rows(manifest, metadata, task)]
    return manifest[manifest["split"] == "test"]


def validate_file(
    path: Path,
    manifest: pd.DataFrame,
    tasks: tuple[str, ...] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> list[Problem]:
    """Problems of the submission `path` against the manifest's test rows (in list order);
    `metadata` (the manifest's) picks the task's rows when the dataset has per-task lists."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line end
    problems = [
        Problem(i + 1, "line ends with a carriage return (CRLF)")
        for i, line in enumerate(lines)
        if line.endswith("\r")
    ]
    lines = [line.rstrip("\r") for line in lines]
    test = _listed(manifest, metadata, tasks or (_tasks_of_header(lines[0]) if lines else None))
    problems += validate_lines(lines, test["image"].astype(str).tolist(), tasks)
    return sorted(problems, key=lambda p: p.line)


def validate_video_folder(
    folder: Path,
    manifest: pd.DataFrame,
    task: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> list[tuple[str, Problem]]:
    """Problems of an ABAW3 per-video submission folder: one `<video>.txt` per test video,
    the task header, then one line per frame 1..last. Returns (file name, problem) pairs."""
    fixed = task
    task = task or folder_task(folder)
    test = _listed(manifest, metadata, (task,) if task else None)
    last_frames = test.groupby("video", sort=False)["frame"].max()
    problems: list[tuple[str, Problem]] = []
    expected_names = {f"{video}.txt" for video in last_frames.index}
    for extra in sorted({p.name for p in Path(folder).glob("*.txt")} - expected_names):
        problems.append((extra, Problem(0, "not a test video of the dataset")))
    for video, last in last_frames.items():
        path = Path(folder) / f"{video}.txt"
        if not path.exists():
            problems.append((path.name, Problem(0, "file missing")))
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        header = lines[0] if lines else ""
        file_task = fixed or next((t for t, h in TASK_HEADERS.items() if h == header), None)
        if file_task is None or header != TASK_HEADERS.get(file_task):
            problems.append((path.name, Problem(1, f"header {header!r} is not a task header")))
            if file_task is None:
                continue
        width = len(field_names((file_task,)))
        for number, line in enumerate(lines[1:], start=2):
            fields = line.split(",")
            if len(fields) != width:
                problems.append(
                    (path.name, Problem(number, f"{len(fields)} fields, expected {width}"))
                )
                continue
            problems += [
                (path.name, Problem(number, m)) for m in check_values((file_task,), fields)
            ]
        if len(lines) - 1 != last:
            message = f"{len(lines) - 1} frame lines, expected {last} (frames 1..{last})"
            problems.append((path.name, Problem(len(lines) + 1, message)))
    return problems


def constant_columns(rows: list[list[str]], tasks: tuple[str, ...]) -> list[str]:
    """Warnings for value columns that hold one value on every line (of several): the mark of
    a prior or a default filled in for predictions."""
    names = field_names(tasks)
    rows = [r for r in rows if len(r) == len(names)]
    if len(rows) < 2:
        return []
    return [
        f"column {name} is {values.pop()!r} on all {len(rows)} lines: a constant, not "
        "predictions (a training prior or a default?)"
        for k, name in enumerate(names)
        if len(values := {r[k] for r in rows}) == 1
    ]


def file_value_rows(path: Path) -> list[list[str]]:
    """The value fields of each data line of a single-file submission (image field dropped)."""
    lines = Path(path).read_text(encoding="utf-8").split("\n")[1:]
    return [line.rstrip("\r").split(",")[1:] for line in lines if line.strip()]


def folder_task(folder: Path) -> str | None:
    """The task of a per-video folder, from the header of its first file."""
    for path in sorted(Path(folder).glob("*.txt")):
        with open(path, encoding="utf-8") as handle:
            header = handle.readline().rstrip("\r\n")
        return next((t for t, h in TASK_HEADERS.items() if h == header), None)
    return None


def folder_value_rows(folder: Path) -> list[list[str]]:
    """The value fields of every data line of every file of a per-video folder."""
    rows = []
    for path in sorted(Path(folder).glob("*.txt")):
        lines = path.read_text(encoding="utf-8").splitlines()
        rows += [line.split(",") for line in lines[1:] if line]
    return rows


def blend_record_warnings(runs_dir: Path, file: Path) -> list[str]:
    """Compare `file` (or the files in the folder) with what each blend.json under
    `runs_dir` recorded: a blend.json records the sha256 of every file it wrote, so a
    mismatch means the file is not the one that blend describes."""
    target = Path(file).resolve()
    warnings, seen = [], False
    for record in sorted(Path(runs_dir).glob("*/blend/blend.json")):
        try:
            entries = json.loads(record.read_text(encoding="utf-8")).get("submission_files", [])
        except (OSError, ValueError, AttributeError):
            warnings.append(f"{record}: unreadable blend record")
            continue
        for entry in entries:
            if not isinstance(entry, dict) or "path" not in entry:
                continue
            path = Path(entry["path"]).resolve()
            if path != target and not path.is_relative_to(target):
                continue
            seen = True
            if not path.is_file():
                warnings.append(f"{path}: recorded in {record} but missing")
            elif sha256_file(path) != entry.get("sha256"):
                warnings.append(
                    f"{path}: differs from the file {record} recorded (written by another "
                    "blend run or edited since); rerun `pipeline blend`"
                )
    if not seen:
        warnings.append(
            f"no blend.json under {runs_dir} records {file} (not written by `pipeline blend`, "
            "or that blend did not finish)"
        )
    return warnings
