"""The manifest contract: dtypes, provenance metadata, distinct images, image paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from affectpipe.errors import InputError
from affectpipe.manifest import (
    distinct_images,
    empty_manifest,
    image_paths,
    read_manifest,
    read_manifest_metadata,
    write_manifest,
)
from affectpipe.schema import MANIFEST_COLUMNS, MANIFEST_DTYPES


def small_manifest() -> pd.DataFrame:
    frame = empty_manifest(4)
    frame["image"] = ["a/00001.jpg", "a/00002.jpg", "a/00001.jpg", "t/00001.jpg"]
    frame["video"] = ["a", "a", "a", "t"]
    frame["frame"] = [1, 2, 1, 1]
    frame["split"] = ["train", "val", "val", "test"]
    frame["has_image"] = [True, False, True, True]
    frame.loc[0, ["valence", "arousal"]] = [0.25, -0.5]
    frame.loc[1, "expression"] = 4
    return frame


def test_round_trip_keeps_dtypes_order_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "ds" / "manifest.parquet"
    metadata = {"dataset": "ds", "image_roots": {"train": "/r"}, "test_list": None}
    write_manifest(small_manifest(), path, metadata)
    back = read_manifest(path)
    assert tuple(back.columns) == MANIFEST_COLUMNS
    assert {c: str(back[c].dtype) for c in back} == MANIFEST_DTYPES
    assert back["image"].tolist() == small_manifest()["image"].tolist()
    assert back.loc[0, "valence"] == pytest.approx(0.25) and np.isnan(back.loc[1, "valence"])
    assert back["expression"].tolist() == [-1, 4, -1, -1]
    assert read_manifest_metadata(path) == metadata
    assert [p.name for p in path.parent.iterdir()] == ["manifest.parquet"]  # no temp left


def test_missing_manifest_and_columns_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="pipeline index"):
        read_manifest(tmp_path / "nope.parquet")
    with pytest.raises(InputError, match="lacks columns"):
        write_manifest(small_manifest().drop(columns="au26"), tmp_path / "m.parquet", {})
    assert not (tmp_path / "m.parquet").exists()


def test_distinct_images_first_occurrence_order() -> None:
    assert distinct_images(small_manifest()).tolist() == [
        "a/00001.jpg",
        "a/00002.jpg",
        "t/00001.jpg",
    ]


def test_image_paths_per_split_root() -> None:
    roots = {"train": "/data/ca", "val": "/data/ca", "test": "/data/test"}
    paths = image_paths(small_manifest(), {"image_roots": roots})
    assert paths.tolist() == [
        str(Path("/data/ca/a/00001.jpg")),
        None,  # has_image false
        str(Path("/data/ca/a/00001.jpg")),
        str(Path("/data/test/t/00001.jpg")),
    ]
