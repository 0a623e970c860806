"""The text report `pipeline index` prints: rows, labels, class balance, gaps, fixes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from affectpipe.schema import AU_COLUMNS, EXPR_NAMES, SPLITS
from affectpipe.tasks import TASK_DEFS

MAX_LISTED_MISSING = 10
MOST_TEST_IMAGES_MISSING = 0.5  # share of test rows without image that triggers a warning


def label_masks(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Rows labelled for each task, by the rule heads and blend use (`Task.valid_rows`), so
    `index` counts the rows they train and score on."""
    return {task.name: task.valid_rows(task.targets(frame)) for task in TASK_DEFS.values()}


def summarize(frame: pd.DataFrame, metadata: dict[str, Any]) -> str:
    split_of = frame["split"].to_numpy(dtype=object)
    rows_of = {s: split_of == s for s in SPLITS if (split_of == s).any()}
    masks = label_masks(frame)
    lines = [f"dataset {metadata.get('dataset')!r}, format {metadata.get('format')}"]
    lines.append("rows per split:  " + _per_split(rows_of, np.ones(len(frame), bool)))
    for task, mask in masks.items():
        lines.append(f"labelled {task:<5}   " + _per_split(rows_of, mask))
    for split, rows in rows_of.items():
        codes = frame["expression"].to_numpy()[rows & masks["expr"]]
        if len(codes):
            counts = np.bincount(codes, minlength=len(EXPR_NAMES))
            hist = ", ".join(f"{n} {c}" for n, c in zip(EXPR_NAMES, counts, strict=True))
            lines.append(f"expression {split}: {hist}")
        au = frame.loc[rows, list(AU_COLUMNS)].to_numpy()
        valid = au >= 0
        if valid.any():
            rates = (au == 1).sum(axis=0) / np.maximum(valid.sum(axis=0), 1)
            text = ", ".join(f"{c} {r:.2f}" for c, r in zip(AU_COLUMNS, rates, strict=True))
            lines.append(f"AU positive rate {split}: {text}")
    lines.extend(_missing_images(frame, rows_of))
    fixes = metadata.get("lenient_fixes") or {}
    for path, count in fixes.items():
        lines.append(f"lenient: {count} line(s) of {path} had bad fields, marked missing")
    listed = _test_lists(metadata)
    if not listed and str(metadata.get("format", "")).startswith("abaw"):
        lines.append("no challenge test list found: name one with --test-list to get test rows")
    for task, entry in listed.items():
        where = f" rows {entry['rows'][0]}..{entry['rows'][1] - 1}" if "rows" in entry else ""
        lines.append(
            f"test list{' ' + task if task else ''} {entry['path']} ({entry['style']}"
            f"{', trailing commas' if entry['trailing_comma'] else ''}){where}"
        )
    lines.extend(_test_images_warning(frame, metadata, listed))
    if "val" not in rows_of:
        lines.append("WARNING: " + no_validation_message(metadata))
    return "\n".join(lines)


def no_validation_message(metadata: dict[str, Any], tasks: str = "") -> str:
    """Why a dataset without validation rows cannot be scored or blended, and how to make
    them; `index` warns with it, `heads` and `blend` refuse with it (NoValidationError)."""
    name = metadata.get("dataset", "NAME")
    head = (
        f"dataset {name!r} has no validation rows{' labelled for ' + tasks if tasks else ''}"
        ": heads are scored and the blend is tuned on the val split."
    )
    if metadata.get("format") != "csv":
        return head + (
            " Index the validation annotations with the training ones (abaw-mtl:"
            " --val-file; per-task formats: the task's Validation_Set/ folder)."
        )
    table = (metadata.get("options") or {}).get("csv", "labels.csv")
    return head + (
        f" Re-index with a held-out share of whole videos: `pipeline index {table} --format csv"
        f" --name {name} --val-fraction 0.2 --video-column COLUMN` (COLUMN groups the rows"
        " that must stay together, e.g. a video or person id; default `video`, without one"
        " each image is its own group), or add a `split` column (train/val/test) to the CSV."
    )


def _test_lists(metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{task: entry} of `test_lists`, else {"": test_list}, else {}."""
    if metadata.get("test_lists"):
        return dict(metadata["test_lists"])
    return {"": metadata["test_list"]} if metadata.get("test_list") else {}


def _test_images_warning(
    frame: pd.DataFrame, metadata: dict[str, Any], listed: dict[str, dict[str, Any]]
) -> list[str]:
    """A loud line per test list whose frames mostly have no image: the usual cause is a test
    image folder the indexer did not look in, and predictions for such rows are only guesses."""
    test = (frame["split"] == "test").to_numpy()
    blocks = {
        task: np.isin(np.arange(len(frame)), np.arange(*entry["rows"]))
        for task, entry in listed.items()
        if "rows" in entry
    } or {"": test}
    absent = ~frame["has_image"].to_numpy()
    root = (metadata.get("image_roots") or {}).get("test", "?")
    lines = []
    for task, rows in blocks.items():
        n, missing = int(rows.sum()), int((rows & absent).sum())
        if n and missing > n * MOST_TEST_IMAGES_MISSING:
            what = f"{task} test rows" if task else "test rows"
            lines.append(
                f"WARNING: {missing} of {n} {what} ({100 * missing / n:.0f}%) have no image"
                f" under {root}. If the test images are in another folder (e.g."
                " cropped_aligned_2022_MTL_test/), re-index with --test-image-root FOLDER;"
                " predictions for frames without an image are only interpolated or a prior."
            )
    return lines


def _per_split(rows_of: dict[str, np.ndarray], mask: np.ndarray) -> str:
    return ", ".join(f"{s} {int((mask & rows).sum())}" for s, rows in rows_of.items())


def _missing_images(frame: pd.DataFrame, rows_of: dict[str, np.ndarray]) -> list[str]:
    lines = []
    absent = ~frame["has_image"].to_numpy()
    for split, in_split in rows_of.items():
        rows = absent & in_split
        if not rows.any():
            continue
        shown = frame["image"].to_numpy()[rows][:MAX_LISTED_MISSING]
        more = int(rows.sum()) - len(shown)
        lines.append(
            f"{split}: {int(rows.sum())} listed image(s) missing on disk: {', '.join(shown)}"
            + (f" (+{more} more)" if more > 0 else "")
        )
    return lines
