"""How each task's decided outputs are written in a submission line, and checked when read.

A line of a submission holds the image (or nothing, in a per-video file) and then the value
fields of one or more tasks in `TASKS` order (the MTL line: VA, EXPR, the 12 AUs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from affectpipe.schema import AU_NUMBERS


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


def _check_va(fields: list[str]) -> list[str]:
    out = []
    for name, text in zip(("valence", "arousal"), fields, strict=True):
        try:
            value = float(text)
        except ValueError:
            out.append(f"{name} {text!r} is not a number")
            continue
        if not math.isfinite(value) or not -1.0 <= value <= 1.0:
            out.append(f"{name} {text} is outside [-1, 1]")
    return out


def _check_expr(fields: list[str]) -> list[str]:
    text = fields[0]
    if not (text.isdigit() and 0 <= int(text) <= 7):
        return [f"expression {text!r} is not an integer 0..7"]
    return []


def _check_au(fields: list[str]) -> list[str]:
    bad = [i for i, text in enumerate(fields) if text not in ("0", "1")]
    return [f"AU values must be 0 or 1; field(s) {[fields[i] for i in bad]}"] if bad else []


FORMATTERS = {"va": format_va, "expr": format_expr, "au": format_au}
CHECKS = {"va": _check_va, "expr": _check_expr, "au": _check_au}
# The value fields of each task, by name (an EXPR line has one: the class code).
FIELD_NAMES: dict[str, tuple[str, ...]] = {
    "va": ("valence", "arousal"),
    "expr": ("expression",),
    "au": tuple(f"AU{n}" for n in AU_NUMBERS),
}


def field_names(tasks: Sequence[str]) -> list[str]:
    """Names of the value fields of a line holding `tasks`' values."""
    return [name for task in tasks for name in FIELD_NAMES[task]]


def check_values(tasks: Sequence[str], values: list[str]) -> list[str]:
    """Problems with the value fields of one data line (without the image field)."""
    problems, start = [], 0
    for task in tasks:
        width = len(FIELD_NAMES[task])
        problems += CHECKS[task](values[start : start + width])
        start += width
    return problems
