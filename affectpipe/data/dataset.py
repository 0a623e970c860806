"""What a dataset format hands to the indexer: resolved inputs first, parsed rows second.

A format (`affectpipe.data.formats`) works in two steps so that an unchanged dataset is
recognised before anything is parsed: `resolve` finds the files and image roots (cheap),
`read` parses them into a `Table`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd


@dataclass(frozen=True)
class Inputs:
    """Files and folders a format will read, and its options resolved to plain values."""

    sources: tuple[Path, ...]  # every file read: annotation files, then the test list
    image_roots: Mapping[str, Path]  # split -> folder the image keys are relative to
    options: Mapping[str, Any]  # JSON-able, recorded in the manifest's provenance
    test_list: Path | None = None
    parts: Mapping[str, Inputs] = field(default_factory=dict)  # per task, for `abaw-tasks`


@dataclass(frozen=True)
class TestList:
    """How a challenge test list is written, so submissions can be written the same way."""

    path: Path
    style: str  # a registered submission style (`affectpipe.submission`): mtl, frame-lines, ...
    header: str | None
    trailing_comma: bool
    rows: tuple[int, int] | None = None  # [start, stop) manifest rows, where one of several

    def __post_init__(self) -> None:
        from affectpipe.submission import get_style

        get_style(self.style)  # a format naming an unregistered style fails here, not at blend


@dataclass
class Table:
    """Parsed rows: `frame` has `image`, `split` and label columns (optionally `video`,
    `frame`, `has_image`); `fixes` counts lenient fixes per file. A dataset with one test
    list per task sets `test_lists` (each with its `rows`) instead of `test_list`."""

    frame: pd.DataFrame
    test_list: TestList | None = None
    fixes: dict[str, int] = field(default_factory=dict)
    test_lists: dict[str, TestList] = field(default_factory=dict)  # per task (`abaw-tasks`)


class DatasetFormat(Protocol):
    """One supported layout (`pipeline index --format NAME`)."""

    name: str
    option_names: tuple[str, ...]

    def resolve(self, root: Path, **options: Any) -> Inputs: ...

    def read(
        self, inputs: Inputs, images: Mapping[Path, frozenset[str]], *, lenient: bool
    ) -> Table:
        """Parse `inputs`; `images` lists the image keys found under each image root."""
        ...
