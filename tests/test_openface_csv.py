"""The OpenFace 2.x CSV importer on hand-written CSVs of both flavours and separator styles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from affectpipe.errors import AnnotationError, InputError
from affectpipe.extract.backbones.openface_csv import BLOCKS, import_openface_csv
from affectpipe.features import read_feature_file

AU_COLUMNS = [*BLOCKS["au_r"], *BLOCKS["au_c"]]
POSE = list(BLOCKS["pose"])
LANDMARKS = list(BLOCKS["landmarks"])


def au_values(seed: float) -> list[str]:
    """Distinct AU values for one row: intensities seed + k/100, presences alternating."""
    intensities = [f"{seed + k / 100:.2f}" for k in range(17)]
    presences = [f"{(k % 2):.1f}" for k in range(18)]
    return intensities + presences


def write_csv(
    path: Path, header: list[str], rows: list[list[str]], separator: str, newline: str = "\n"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [separator.join(header)] + [separator.join(row) for row in rows]
    path.write_bytes((newline.join(lines) + newline).encode())
    return path


@pytest.fixture()
def dataset(tmp_path: Path) -> dict:
    """Two image folders and OpenFace output for them.

    vidA (FeatureExtraction -fdir, OpenFace <= 2.2 ", " separators and CRLF, with pose):
        00001.jpg (face), 00002.jpg (success 0), 00010.png (third in sorted order, so frame
        3, not 10), notes.txt and 00003.JPG (upper-case extension: OpenFace skips both).
    vidB (FaceLandmarkImg, "," separators, with pose and 2D landmarks):
        00001.jpg two faces (the second more confident), 00002.jpg no CSV (no face),
        00003.jpg NaN written as -nan(ind).
    """
    images = tmp_path / "images"
    for name in ("00001.jpg", "00002.jpg", "00010.png", "00003.JPG", "notes.txt"):
        (images / "vidA").mkdir(parents=True, exist_ok=True)
        (images / "vidA" / name).write_bytes(b"")
    for name in ("00001.jpg", "00002.jpg", "00003.jpg"):
        (images / "vidB").mkdir(parents=True, exist_ok=True)
        (images / "vidB" / name).write_bytes(b"")
    out = tmp_path / "openface"
    sequence_header = ["frame", "face_id", "timestamp", "confidence", "success", *POSE]
    write_csv(
        out / "vidA.csv",
        sequence_header + AU_COLUMNS,
        [
            ["1", "0", "0.000", "0.98", "1", *["1.0"] * 6, *au_values(1.0)],
            ["2", "0", "0.000", "0.00", "0", *["0"] * 6, *["0"] * 35],
            ["3", "0", "0.000", "0.91", "1", *["3.0"] * 6, *au_values(3.0)],
        ],
        ", ",
        "\r\n",  # as the Windows binaries write it
    )
    image_header = ["face", "confidence", *POSE, *LANDMARKS, *AU_COLUMNS]
    write_csv(
        out / "vidB" / "00001.csv",
        image_header,
        [
            ["0", "0.500", *["4.0"] * 6, *["50.0"] * 136, *au_values(4.0)],
            ["1", "0.900", *["5.0"] * 6, *["60.0"] * 136, *au_values(5.0)],
        ],
        ",",
    )
    nan_row = au_values(6.0)
    nan_row[3] = "-nan(ind)"
    write_csv(
        out / "vidB" / "00003.csv",
        image_header,
        [["0", "0.700", *["6.0"] * 6, *["70.0"] * 136, *nan_row]],
        ",",
    )
    keys = [
        "vidA/00001.jpg",
        "vidA/00002.jpg",
        "vidA/00010.png",
        "vidA/00003.JPG",
        "vidB/00001.jpg",
        "vidB/00002.jpg",
        "vidB/00003.jpg",
        "vidC/00001.jpg",  # listed without an image
    ]
    paths = [str(images / key) for key in keys[:-1]] + [None]
    return {"keys": keys, "paths": paths, "out": out, "tmp": tmp_path}


def run_import(dataset: dict) -> tuple[dict, object]:
    target = dataset["tmp"] / "features" / "openface-csv.h5"
    summary = import_openface_csv(
        dataset["keys"], dataset["paths"], dataset["out"], target, {"source": "test"}
    )
    return summary, read_feature_file(target)


def test_import_maps_rows_to_images_in_both_flavours(dataset):
    summary, features = run_import(dataset)
    assert list(features.images) == dataset["keys"]
    assert features.ok.tolist() == [True, False, True, False, True, False, False, False]
    # pose and AUs are in every CSV; landmarks only in the FaceLandmarkImg ones.
    assert features.attrs["groups"] == {
        "au_r": [0, 17],
        "au_c": [17, 35],
        "pose": [35, 41],
        "au": [0, 35],
    }
    assert features.attrs["backbone"] == "openface-csv"
    assert features.attrs["source"] == "test"
    assert features.parts() == ["embedding", "au_r", "au_c", "pose", "au"]

    au_r, au_c, pose = features.load("au_r"), features.load("au_c"), features.load("pose")
    expected = np.array([float(v) for v in au_values(1.0)], dtype=np.float32)
    assert np.array_equal(np.concatenate([au_r[0], au_c[0]]), expected)
    assert np.all(pose[0] == 1.0)
    assert np.all(pose[2] == 3.0)  # 00010.png is the third sorted image: frame 3
    assert np.all(pose[4] == 5.0)  # the more confident of the two faces
    assert au_r[4, 0] == pytest.approx(5.0)
    assert not features.load("embedding")[~features.ok].any()
    assert summary["ok"] == 3 and summary["no_face"] == 1 and summary["nan_values"] == 1
    assert summary["no_output"] == 3  # 00003.JPG, vidB/00002.jpg, vidC/00001.jpg
    assert summary["csv_files"] == 3 and summary["blocks"] == "au_r,au_c,pose"
    assert features.attrs["openface_separators"] == "comma+comma-space"
    assert features.attrs["openface_flavours"] == "image+sequence"


def test_import_is_deterministic(dataset):
    _, first = run_import(dataset)
    _, second = run_import(dataset)
    assert np.array_equal(first.load("embedding"), second.load("embedding"))
    assert first.attrs["openface_csv_sha256"] == second.attrs["openface_csv_sha256"]


def test_landmark_block_kept_when_every_csv_has_it(dataset):
    (dataset["out"] / "vidA.csv").unlink()
    summary, features = run_import(dataset)
    assert "landmarks" in features.attrs["groups"]
    assert features.ok.tolist() == [False] * 4 + [True, False, False, False]
    assert np.all(features.load("landmarks")[4] == 60.0)
    assert summary["flavours"] == "image"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("2, 0, 0.000, 0.98, 1", "fields where the header has"),
        ("2, 0, 0.000, 0.98, 1, " + ", ".join(["oops"] * 41), "is not a number"),
    ],
)
def test_malformed_rows_name_file_and_line(dataset, line, message):
    path = dataset["out"] / "vidA.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines[:2], line, *lines[3:]]) + "\n")
    with pytest.raises(AnnotationError, match=message) as caught:
        run_import(dataset)
    assert caught.value.path == path and caught.value.line == 3


def test_a_csv_that_is_not_openface_output_is_refused(dataset):
    write_csv(dataset["out"] / "vidA.csv", ["a", "b"], [["1", "2"]], ",")
    with pytest.raises(AnnotationError, match="not an OpenFace CSV") as caught:
        run_import(dataset)
    assert caught.value.line == 1


def test_more_rows_than_folder_images_is_an_error(dataset):
    path = dataset["out"] / "vidA.csv"
    extra = ", ".join(["4", "0", "0.000", "0.90", "1", *["1.0"] * 6, *au_values(1.0)])
    path.write_text(path.read_text() + extra + "\n")
    with pytest.raises(InputError, match="folder changed"):
        run_import(dataset)


def test_no_matching_csv_is_an_error(dataset, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no OpenFace CSV"):
        import_openface_csv(dataset["keys"], dataset["paths"], empty, tmp_path / "x.h5", {})
