"""Text label fields -> manifest label columns, validated column-wise with located errors.

Rules (abaw-formats.md §1.3, §3.2): valence/arousal in [-1, 1] or the -5 sentinel (either
one missing makes both NaN); expression an integer in -1..7; an AU in {-1, 0, 1}. Strict
mode raises `AnnotationError` for the earliest bad value; lenient mode marks it missing and
counts the fixed lines per file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from affectpipe.data.records import Problem, Records, raise_first
from affectpipe.schema import AU_COLUMNS, AU_MISSING, EXPR_MISSING, VA_COLUMNS, VA_MISSING_SENTINEL

LABEL_COLUMNS: tuple[str, ...] = (*VA_COLUMNS, "expression", *AU_COLUMNS)


@dataclass
class ParsedLabels:
    """Label columns (only those parsed) and the rows lenient mode had to fix."""

    columns: dict[str, np.ndarray]
    fixed: np.ndarray  # [n] bool


def _why_bad(column: str, values: np.ndarray) -> tuple[np.ndarray, str]:
    """Rows of `values` (float, NaN = not a number) that break the column's rule, and why."""
    if column in VA_COLUMNS:
        ok = ((values >= -1.0) & (values <= 1.0)) | (values == VA_MISSING_SENTINEL)
        return ~ok, "must be a number in [-1, 1] or -5 (missing)"
    if column == "expression":
        ok = (values >= EXPR_MISSING) & (values <= 7) & (values == np.round(values))
        return ~ok, "must be an integer 0..7 or -1 (missing)"
    ok = np.isin(values, (AU_MISSING, 0, 1))
    return ~ok, "must be 0, 1 or -1 (missing)"


def _as_numbers(texts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float columns (NaN where not a number); one numpy conversion when every field parses."""
    if not texts:
        return {}
    try:
        block = np.stack(list(texts.values()), axis=1).astype(np.float64)
        return {name: block[:, k].copy() for k, name in enumerate(texts)}
    except ValueError:  # some field is blank or not a number: convert column-wise, coercing
        return {
            name: pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan, copy=True
            )
            for name, text in texts.items()
        }


def _blank(text: np.ndarray) -> np.ndarray:
    return np.array([not str(t).strip() for t in text], dtype=bool)


def parse_labels(
    records: Records,
    columns: dict[str, int],
    *,
    lenient: bool,
    empty_is_missing: bool = False,
    also: Sequence[Problem] = (),
) -> ParsedLabels:
    """Parse `records` field `columns[name]` into each named manifest label column.

    Rows whose field count was wrong (`records.malformed`) get all labels missing; in strict
    mode their problem is reported like any bad value. `empty_is_missing` treats blank fields
    as missing labels (CSV tables) instead of errors. `also`: the caller's own problems
    (e.g. bad image keys), raised in strict mode if they come first.
    """
    n = len(records)
    bad_rows = records.malformed.copy()
    problems: list[Problem] = [*records.problems, *also]
    numbers: dict[str, np.ndarray] = {}
    texts = {name: records.column(j) for name, j in columns.items()}
    for name, values in _as_numbers(texts).items():
        bad, rule = _why_bad(name, values)
        bad &= ~records.malformed
        if empty_is_missing:
            blank = _blank(texts[name])
            bad &= ~blank
            values[blank] = np.nan
        for i in np.flatnonzero(bad)[:1]:  # the earliest bad row of this column is enough
            text = str(texts[name][i]).strip()
            problems.append(
                Problem(int(records.file[i]), int(records.line[i]), f"{name} {text!r}: {rule}")
            )
        values[bad | records.malformed] = np.nan
        bad_rows |= bad
        numbers[name] = values
    if not lenient:
        raise_first(records, problems)

    out: dict[str, np.ndarray] = {}
    if any(c in numbers for c in VA_COLUMNS):
        va = np.stack([numbers.get(c, np.full(n, np.nan)) for c in VA_COLUMNS], axis=1)
        va[(va == VA_MISSING_SENTINEL) | ~np.isfinite(va)] = np.nan
        va[np.isnan(va).any(axis=1)] = np.nan
        out.update({c: va[:, k].astype(np.float32) for k, c in enumerate(VA_COLUMNS)})
    for name, values in numbers.items():
        if name not in VA_COLUMNS:
            out[name] = np.where(np.isnan(values), -1, values).astype(np.int8)
    return ParsedLabels(out, bad_rows)


def missing_labels(
    n: int, present: set[str] | frozenset[str] = frozenset()
) -> dict[str, np.ndarray]:
    """All-missing label columns for `n` rows, except the names in `present`."""
    out: dict[str, np.ndarray] = {}
    for name in LABEL_COLUMNS:
        if name in present:
            continue
        out[name] = (
            np.full(n, np.nan, dtype=np.float32)
            if name in VA_COLUMNS
            else np.full(n, -1, dtype=np.int8)
        )
    return out
