"""s-Aff-Wild2 multi-task layout (ABAW3/4/7 MTL challenge; abaw-formats.md §1).

Annotation files have a header and 16 positional fields per line: image, valence, arousal,
expression, then the 12 AUs. The test list holds one image key per line after its header,
with (ABAW7) or without (ABAW4) a trailing comma.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from affectpipe.data.dataset import Inputs, Table
from affectpipe.data.formats.common import (
    given_or_found,
    labelled_rows,
    listed_rows,
    merge_fixes,
    read_frame_list,
)
from affectpipe.data.labels import LABEL_COLUMNS, parse_labels
from affectpipe.data.records import (
    Records,
    frame_keys,
    looks_like_image_path,
    read_lines,
    split_lines,
)
from affectpipe.errors import InputError

TRAIN_FILES = ("training_set_annotations.txt", "train_set.txt", "MTL_Challenge/train_set.txt")
VAL_FILES = (
    "validation_set_annotations.txt",
    "validation_set.txt",
    "MTL_Challenge/validation_set.txt",
)
TEST_LISTS = (
    "MTL_Challenge_test_set_release.txt",
    "test_set_examples/MTL.txt",
    "MTL.txt",
    "Multi_Task_Learning_Challenge_test_set_release.txt",
)
# Names participants gave the test image tree; else the train/val image root is used.
TEST_IMAGE_ROOTS = (
    "test_data/cropped_aligned",
    "mtl_test_data/cropped_aligned",
    "testset/cropped_aligned",
)
N_FIELDS = 1 + len(LABEL_COLUMNS)


class AbawMtl:
    name = "abaw-mtl"
    option_names = ("train_file", "val_file", "test_list", "image_root", "test_image_root")

    def resolve(
        self,
        root: Path,
        *,
        train_file: str | Path | None = None,
        val_file: str | Path | None = None,
        test_list: str | Path | None = None,
        image_root: str | Path | None = None,
        test_image_root: str | Path | None = None,
    ) -> Inputs:
        train = given_or_found(
            train_file, [root / n for n in TRAIN_FILES], "training annotations", "--train-file"
        )
        val = given_or_found(
            val_file, [root / n for n in VAL_FILES], "validation annotations", "--val-file"
        )
        images = given_or_found(
            image_root, [root / "cropped_aligned"], "image root", "--image-root"
        )
        tests: Path | None = None
        if test_list is not None or any((root / n).exists() for n in TEST_LISTS):
            tests = given_or_found(
                test_list, [root / n for n in TEST_LISTS], "test list", "--test-list"
            )
        roots = {"train": images, "val": images}
        if tests is not None:
            roots["test"] = given_or_found(
                test_image_root,
                [*(root / n for n in TEST_IMAGE_ROOTS), images],
                "test image root",
                "--test-image-root",
            )
        sources = (train, val) + ((tests,) if tests else ())
        options = {"root": str(root.resolve())}
        return Inputs(sources, roots, options, tests)

    def read(
        self, inputs: Inputs, images: Mapping[Path, frozenset[str]], *, lenient: bool
    ) -> Table:
        train, val = inputs.sources[:2]
        parts = []
        for path in (train, val):
            lines = read_lines(path)
            if not lines:
                raise InputError(f"{path} is empty (expected a header line, then one image a line)")
            # The header is skipped whatever it says; a file without one loses no row.
            skip = 0 if looks_like_image_path(lines[0]) else 1
            parts.append(split_lines(path, lines[skip:], N_FIELDS, first_line=1 + skip))
        records = Records.concat(parts)
        split = np.repeat(np.array(["train", "val"], dtype=object), [len(p) for p in parts])
        keys = frame_keys(records)
        labels = parse_labels(
            records,
            {name: j + 1 for j, name in enumerate(LABEL_COLUMNS)},
            lenient=lenient,
            also=keys.problems,
        )
        frame, fixes = labelled_rows(records, keys, labels, split)
        test_list = None
        if inputs.test_list is not None:
            test_records, test_list = read_frame_list(inputs.test_list, "mtl")
            tests, test_fixes = listed_rows(test_records, lenient=lenient)
            frame = pd.concat([frame, tests], ignore_index=True)
            fixes = merge_fixes(fixes, test_fixes)
        return Table(frame, test_list, fixes)
