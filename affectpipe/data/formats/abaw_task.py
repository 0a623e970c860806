"""Per-task Aff-Wild2 layouts (ABAW3/5/6/8 VA, EXPR, AU challenges; abaw-formats.md §3).

`<task folder>/Train_Set/<video>.txt` and `Validation_Set/<video>.txt`: a header, then line
i (after the header) holds the labels of video frame i -> image key `<video>/<i:05d>.jpg`.

Test lists: ABAW3 lists video names, one per line without a header; each video expands to
frames 1..N where N is the highest frame number among its images (frames in between without
an image get `has_image` false, as the challenge wanted a prediction for every frame).
ABAW5/6 lists have a header, then one frame a line (`key,` or `key,values`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from affectpipe.data.dataset import Inputs, Table, TestList
from affectpipe.data.formats.common import (
    first_existing,
    given_or_found,
    labelled_rows,
    listed_rows,
    merge_fixes,
    read_frame_list,
)
from affectpipe.data.labels import missing_labels, parse_labels
from affectpipe.data.records import (
    FrameKeys,
    Records,
    read_lines,
    refuse_escaping_keys,
    split_lines,
)
from affectpipe.errors import AnnotationError, InputError
from affectpipe.schema import AU_COLUMNS, VA_COLUMNS

TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "va": VA_COLUMNS,
    "expr": ("expression",),
    "au": AU_COLUMNS,
}
TASK_FOLDERS: dict[str, tuple[str, ...]] = {
    "va": ("VA_Estimation_Challenge", "VA_Set"),
    "expr": ("EXPR_Recognition_Challenge", "EXPR_Classification_Challenge", "EXPR_Set"),
    "au": ("AU_Detection_Challenge", "AU_Set"),
}
TEST_LISTS: dict[str, tuple[str, ...]] = {
    "va": (
        "test_set_examples/CVPR_6th_ABAW_VA_test_set_example.txt",
        "CVPR_5th_ABAW_VA_test_set_sample.txt",
        "Valence_Arousal_Estimation_Challenge_test_set_release.txt",
    ),
    "expr": (
        "test_set_examples/CVPR_6th_ABAW_Expr_test_set_example.txt",
        "CVPR_5th_ABAW_EXPR_test_set_sample.txt",
        "Expression_Classification_Challenge_test_set_release.txt",
    ),
    "au": (
        "test_set_examples/CVPR_6th_ABAW_AU_test_set_example.txt",
        "CVPR_5th_ABAW_AU_test_set_sample.txt",
        "Action_Unit_Detection_Challenge_test_set_release.txt",
    ),
}
SET_FOLDERS = {"Train_Set": "train", "Validation_Set": "val"}  # folder -> split


class AbawTask:
    option_names = ("test_list", "image_root", "test_image_root")

    def __init__(self, task: str):
        self.task = task
        self.name = f"abaw-{task}"

    def resolve(
        self,
        root: Path,
        *,
        test_list: str | Path | None = None,
        image_root: str | Path | None = None,
        test_image_root: str | Path | None = None,
    ) -> Inputs:
        root = root.resolve()
        task_dir = self._task_dir(root)
        sources: list[Path] = []
        for folder in SET_FOLDERS:
            files = sorted((task_dir / folder).glob("*.txt"))
            if not files:
                raise InputError(f"no annotation files (*.txt) in {task_dir / folder}")
            sources.extend(files)
        near = [task_dir.parent, task_dir.parent.parent]
        images = given_or_found(
            image_root,
            [d / "cropped_aligned" for d in [*near, near[-1].parent]],
            "image root",
            "--image-root",
        )
        tests: Path | None = None
        candidates = [d / name for d in near for name in TEST_LISTS[self.task]]
        if test_list is not None or first_existing(candidates):
            tests = given_or_found(test_list, candidates, "test list", "--test-list")
            sources.append(tests)
        roots = {"train": images, "val": images}
        if tests is not None:
            roots["test"] = (
                given_or_found(test_image_root, [], "test image root", "--test-image-root")
                if test_image_root is not None
                else images
            )
        return Inputs(tuple(sources), roots, {"task_dir": str(task_dir)}, tests)

    def _task_dir(self, root: Path) -> Path:
        if (root / "Train_Set").is_dir():
            return root
        found = first_existing(root / name for name in TASK_FOLDERS[self.task])
        if found is None:
            names = " or ".join(TASK_FOLDERS[self.task])
            raise InputError(f"{root} holds neither Train_Set/ nor a task folder ({names})")
        return found

    def read(
        self, inputs: Inputs, images: Mapping[Path, frozenset[str]], *, lenient: bool
    ) -> Table:
        columns = TASK_FIELDS[self.task]
        annotation_files = [p for p in inputs.sources if p != inputs.test_list]
        parts, splits = [], []
        for path in tqdm(annotation_files, desc=f"reading {self.name}", unit="file", disable=None):
            lines = read_lines(path)
            parts.append(split_lines(path, lines[1:], len(columns), first_line=2, keep_blank=True))
            splits.append(SET_FOLDERS[path.parent.name])
        records = Records.concat(parts)
        split = np.repeat(np.array(splits, dtype=object), [len(p) for p in parts])
        keys = _per_video_keys(records)
        labels = parse_labels(records, {name: j for j, name in enumerate(columns)}, lenient=lenient)
        frame, fixes = labelled_rows(records, keys, labels, split)
        test_list = None
        if inputs.test_list is not None:
            tests, test_list, test_fixes = _read_test_list(
                inputs.test_list, images[inputs.image_roots["test"]], lenient=lenient
            )
            frame = pd.concat([frame, tests], ignore_index=True)
            fixes = merge_fixes(fixes, test_fixes)
        return Table(frame, test_list, fixes)


def _per_video_keys(records: Records) -> FrameKeys:
    """Line i after the header of `<video>.txt` is frame i: key `<video>/<i:05d>.jpg`."""
    stems = np.array([p.stem for p in records.paths], dtype=object)
    video = stems[records.file]
    frame = records.line - 1
    image = np.array([f"{v}/{i:05d}.jpg" for v, i in zip(video, frame.tolist(), strict=True)])
    refuse_escaping_keys(records, image)  # a file named `...txt` has the stem ".."
    n = len(records)
    return FrameKeys(image.astype(object), video, frame, np.ones(n, bool), np.zeros(n, bool), [])


def _read_test_list(
    path: Path, present: frozenset[str], *, lenient: bool
) -> tuple[pd.DataFrame, TestList, dict[str, int]]:
    lines = read_lines(path)
    if any("," in line or "/" in line for line in lines[:5]):
        records, listed = read_frame_list(path, "frame-lines")
        frame, fixes = listed_rows(records, lenient=lenient)
        return frame, listed, fixes
    return _expand_videos(path, lines, present, lenient=lenient)


def _expand_videos(
    path: Path, lines: list[str], present: frozenset[str], *, lenient: bool
) -> tuple[pd.DataFrame, TestList, dict[str, int]]:
    """ABAW3 video-name lists: every frame 1..last image of each listed video."""
    last: dict[str, int] = {}
    for key in present:
        video, _, name = key.rpartition("/")
        stem = name.rsplit(".", 1)[0]
        if stem.isdigit():
            last[video] = max(last.get(video, 0), int(stem))
    videos, frames, skipped = [], [], 0
    for number, line in enumerate(lines, start=1):
        video = line.strip()
        if not video:
            continue
        if video not in last:
            if not lenient:
                raise AnnotationError(path, number, f"no images of video {video!r} found")
            skipped += 1
            continue
        videos.append(np.full(last[video], video, dtype=object))
        frames.append(np.arange(1, last[video] + 1, dtype=np.int64))
    video = np.concatenate(videos) if videos else np.zeros(0, dtype=object)
    frame_numbers = np.concatenate(frames) if frames else np.zeros(0, dtype=np.int64)
    n = len(video)
    frame = pd.DataFrame(
        {
            "image": [f"{v}/{i:05d}.jpg" for v, i in zip(video, frame_numbers, strict=True)],
            "video": video,
            "frame": frame_numbers,
            "split": np.full(n, "test", dtype=object),
            **missing_labels(n),
        }
    )
    listed = TestList(path, "video-names", None, False)
    return frame, listed, ({str(path): skipped} if skipped else {})
