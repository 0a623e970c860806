"""The text report `pipeline index` prints: rows, labels, class balance, gaps, fixes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from affectpipe.schema import AU_COLUMNS, EXPR_NAMES, SPLITS

MAX_LISTED_MISSING = 10


def label_masks(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Rows labelled for each task: VA both values, EXPR a code, AU all 12 (ABAW convention)."""
    return {
        "va": (frame["valence"].notna() & frame["arousal"].notna()).to_numpy(),
        "expr": (frame["expression"] >= 0).to_numpy(),
        "au": (frame[list(AU_COLUMNS)] >= 0).all(axis=1).to_numpy(),
    }


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
    test_list = metadata.get("test_list")
    if not test_list and str(metadata.get("format", "")).startswith("abaw"):
        lines.append("no challenge test list found: name one with --test-list to get test rows")
    if test_list:
        lines.append(
            f"test list {test_list['path']} ({test_list['style']}"
            f"{', trailing commas' if test_list['trailing_comma'] else ''})"
        )
    return "\n".join(lines)


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
