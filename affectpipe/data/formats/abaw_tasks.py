"""Per-task Aff-Wild2 (VA, EXPR, AU challenges) as ONE dataset (`--format abaw-tasks`).

ROOT is the annotations folder holding the task folders (any of the names `abaw-va`,
`abaw-expr` and `abaw-au` accept; a missing task is simply left out). Each task is read by
the per-task reader (`abaw_task.AbawTask`), then:

- train/val rows are the union of the tasks' frames: one row per (split, image key), with
  each task's labels on it (missing where the task does not annotate the frame). A frame
  that one task puts in train and another in val gets one row per split, so no task's
  labels leak into another split (the image key repeats; features are still extracted once
  per distinct key);
- test rows follow, task by task (VA, EXPR, AU), each task's test list as its own contiguous
  block; `Table.test_lists` records each block's manifest rows (see docs/design-notes.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from affectpipe.data.dataset import Inputs, Table, TestList
from affectpipe.data.formats.abaw_task import TASK_FIELDS, TASK_FOLDERS, AbawTask
from affectpipe.data.formats.common import first_existing, merge_fixes
from affectpipe.data.labels import missing_labels
from affectpipe.errors import InputError
from affectpipe.schema import SPLITS, TASKS

KEY_COLUMNS = ["image", "video", "frame", "split"]


class AbawTasks:
    name = "abaw-tasks"
    option_names = ("image_root", "test_image_root")

    def __init__(self) -> None:
        self.readers = {task: AbawTask(task) for task in TASKS}

    def resolve(
        self,
        root: Path,
        *,
        image_root: str | Path | None = None,
        test_image_root: str | Path | None = None,
    ) -> Inputs:
        root = root.resolve()
        if (root / "Train_Set").is_dir():
            raise InputError(
                f"{root} is one task's folder: give the annotations folder that holds the task"
                " folders (or index this one with --format abaw-va/abaw-expr/abaw-au)"
            )
        present = [t for t in TASKS if first_existing(root / n for n in TASK_FOLDERS[t])]
        if not present:
            names = ", ".join(n for t in TASKS for n in TASK_FOLDERS[t])
            raise InputError(f"{root} holds no task folder (looked for {names})")
        parts = {
            task: self.readers[task].resolve(
                root, image_root=image_root, test_image_root=test_image_root
            )
            for task in present
        }
        roots = {split: p for part in parts.values() for split, p in part.image_roots.items()}
        for task, part in parts.items():  # one image tree: all tasks found the same folders
            for split, folder in part.image_roots.items():
                if folder != roots[split]:
                    raise InputError(
                        f"{task} images resolve to {folder}, other tasks' to {roots[split]}:"
                        " name the image root with --image-root"
                    )
        annotations = [p for part in parts.values() for p in part.sources if p != part.test_list]
        tests = [part.test_list for part in parts.values() if part.test_list is not None]
        options = {"tasks": {task: part.options["task_dir"] for task, part in parts.items()}}
        return Inputs(tuple(annotations + tests), roots, options, None, parts)

    def read(
        self, inputs: Inputs, images: Mapping[Path, frozenset[str]], *, lenient: bool
    ) -> Table:
        labelled, tests, fixes = {}, {}, {}
        test_lists: dict[str, TestList] = {}
        for task, part in inputs.parts.items():
            table = self.readers[task].read(part, images, lenient=lenient)
            is_test = (table.frame["split"] == "test").to_numpy()
            labelled[task] = table.frame[~is_test]
            tests[task] = table.frame[is_test]
            fixes = merge_fixes(fixes, table.fixes)
            if table.test_list is not None:
                test_lists[task] = table.test_list
        frame = _union(labelled)
        blocks = [frame]
        start = len(frame)
        for task, listed in test_lists.items():
            stop = start + len(tests[task])
            test_lists[task] = replace(listed, rows=(start, stop))
            blocks.append(tests[task])
            start = stop
        frame = pd.concat(blocks, ignore_index=True)
        return Table(frame, None, fixes, test_lists)


def _union(labelled: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (split, image) over all tasks, train rows first, each task's labels on it."""
    keys = pd.concat([f[KEY_COLUMNS] for f in labelled.values()], ignore_index=True)
    keys = keys.drop_duplicates(["split", "image"])
    order = keys["split"].map({s: k for k, s in enumerate(SPLITS)})
    keys = keys.iloc[np.argsort(order.to_numpy(), kind="stable")].reset_index(drop=True)
    index = pd.MultiIndex.from_frame(keys[["split", "image"]])
    columns = missing_labels(len(keys))
    for task, rows in labelled.items():
        where = index.get_indexer(pd.MultiIndex.from_frame(rows[["split", "image"]]))
        for name in TASK_FIELDS[task]:
            columns[name][where] = rows[name].to_numpy()
    return pd.concat([keys, pd.DataFrame(columns)], axis=1)
