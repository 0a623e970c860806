"""`pipeline index` on hostile input: odd line breaks, non-regular files, keys that leave the
image root, header-only tables, missing test images; and `--format abaw-tasks`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_index import AUS_ON, TRAIN, VAL, write_mtl
from test_index_formats import touch_images, write_csv, write_task

from affectpipe.data.index import index_dataset
from affectpipe.errors import AnnotationError, InputError
from affectpipe.manifest import distinct_images, read_manifest, read_manifest_metadata
from affectpipe.schema import AU_COLUMNS, TASK_HEADERS

# Characters `str.splitlines` breaks lines at, besides "\n": none of them ends a line here.
ODD_BREAKS = ["\f", "\v", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"]
# Those that are also blanks to float(): harmless at the end of a field.
BLANK_BREAKS = ["\f", "\v", "\x85", "\u2028", "\u2029", "\r"]

AU_OFF = ",".join(["0"] * 12)
TASK_LINES = {  # three distinct frames' labels per task
    "va": ["0.1,0.2", "0.3,0.4", "0.5,0.6"],
    "expr": ["1", "2", "3"],
    "au": [AUS_ON, AU_OFF, AUS_ON.replace("0", "x").replace("1", "0").replace("x", "1")],
}
TASK_FOLDER = {"va": "VA_Estimation_Challenge", "expr": "EXPR_Set", "au": "AU_Detection_Challenge"}
TASK_COLUMNS = {"va": ["valence", "arousal"], "expr": ["expression"], "au": list(AU_COLUMNS)}


def labels_of(frame, rows: slice, task: str) -> list[list[float]]:
    return frame.loc[rows, TASK_COLUMNS[task]].to_numpy(dtype=float).round(3).tolist()


def expected(task: str, lines: list[str]) -> list[list[float]]:
    return [[float(v) for v in line.split(",")] for line in lines]


def per_task_dataset(root: Path, task: str, train_lines: list[str]) -> Path:
    annotations = root / "annotations"
    write_task(
        annotations,
        TASK_FOLDER[task],
        TASK_HEADERS[task],
        {"video3": train_lines},
        {"video4": TASK_LINES[task][:1]},
    )
    touch_images(root / "cropped_aligned", ["video3/00001.jpg"])
    return annotations


@pytest.mark.parametrize("char", ODD_BREAKS, ids=repr)
@pytest.mark.parametrize("task", ["va", "expr", "au"])
def test_per_task_odd_break_inside_a_line(tmp_path: Path, task: str, char: str) -> None:
    """Frame 2's line holds a break character between two label groups: one bad line (line 3
    of its file), never two lines that push frame 3 onto other labels."""
    one, two, three = TASK_LINES[task]
    root = per_task_dataset(tmp_path, task, [one, f"{two}{char}{three}", three])
    with pytest.raises(AnnotationError) as caught:
        index_dataset(root, f"abaw-{task}", "ds", tmp_path / "cache")
    assert caught.value.path.name == "video3.txt" and caught.value.line == 3
    result = index_dataset(root, f"abaw-{task}", "ds", tmp_path / "cache", lenient=True)
    frame = read_manifest(result.manifest_path)
    train = frame[frame["split"] == "train"]
    assert train["frame"].tolist() == [1, 2, 3]
    assert labels_of(frame, slice(0, 0), task) == expected(task, [one])
    assert labels_of(frame, slice(2, 2), task) == expected(task, [three])  # not shifted
    missing = frame.loc[1, TASK_COLUMNS[task]].to_numpy(dtype=float)
    assert (np.isnan(missing) | (missing == -1)).all()


@pytest.mark.parametrize("char", BLANK_BREAKS, ids=repr)
def test_per_task_odd_break_at_line_end_is_just_a_blank(tmp_path: Path, char: str) -> None:
    lines = TASK_LINES["va"]
    root = per_task_dataset(tmp_path, "va", [lines[0], lines[1] + char, lines[2]])
    frame = read_manifest(index_dataset(root, "abaw-va", "ds", tmp_path / "cache").manifest_path)
    assert labels_of(frame, slice(0, 2), "va") == expected("va", lines)
    assert (frame["split"] == "train").sum() == 3


def test_crlf_files_are_read_like_lf_files(tmp_path: Path) -> None:
    root = per_task_dataset(tmp_path, "expr", TASK_LINES["expr"])
    path = root / "EXPR_Set" / "Train_Set" / "video3.txt"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    frame = read_manifest(index_dataset(root, "abaw-expr", "ds", tmp_path / "cache").manifest_path)
    assert frame["expression"].tolist()[:3] == [1, 2, 3]


@pytest.mark.parametrize("char", ["\f", "\x85", "\u2028", "\r"], ids=repr)
def test_mtl_and_csv_odd_breaks_keep_line_numbers(tmp_path: Path, char: str) -> None:
    bad = f"video1/00009.jpg,0.5,0.5{char}video1/00010.jpg,0.1,4,{AUS_ON}"
    root = write_mtl(tmp_path / "mtl", train=[*TRAIN[:2], bad, *TRAIN[2:]])
    with pytest.raises(AnnotationError) as caught:
        index_dataset(root, "abaw-mtl", "ds", tmp_path / "cache")
    assert caught.value.line == 4 and "training_set_annotations.txt" in str(caught.value)
    lenient = index_dataset(root, "abaw-mtl", "ds", tmp_path / "cache", lenient=True)
    assert (read_manifest(lenient.manifest_path)["split"] == "train").sum() == len(TRAIN) + 1

    text = f"image,valence,arousal\na.jpg,0.1,0.1\nb.jpg,0.2{char}c.jpg,0.3\nd.jpg,2,0\n"
    table = write_csv(tmp_path / "table", text, [])
    with pytest.raises(AnnotationError) as caught:
        index_dataset(table, "csv", "t", tmp_path / "cache")
    assert caught.value.line == 3
    lenient = index_dataset(table, "csv", "t", tmp_path / "cache", lenient=True)
    frame = read_manifest(lenient.manifest_path)
    assert frame["image"].tolist() == ["a.jpg", "b.jpg", "d.jpg"]
    assert np.isnan(frame["valence"][1:]).all()  # the bad line and the out-of-range one


def test_test_list_lines_are_exact(tmp_path: Path) -> None:
    root = per_task_dataset(tmp_path, "va", TASK_LINES["va"])
    listed = root / "CVPR_5th_ABAW_VA_test_set_sample.txt"
    listed.write_text(
        "image_location,valence,arousal\nt/00001.jpg,\nt/00002.jpg,\u2028\nt/x3.jpg,\n"
    )
    with pytest.raises(AnnotationError) as caught:
        index_dataset(root, "abaw-va", "ds", tmp_path / "cache")
    assert caught.value.line == 4 and "t/x3.jpg" in str(caught.value)


def test_header_only_csv_is_a_clear_input_error(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "table", "image,valence,arousal\n", [])
    done = run_cli(
        "--cache-dir", tmp_path / "cache", "index", table, "--format", "csv", "--name", "ds"
    )
    assert done.returncode == 2, done.stderr
    assert "has no rows" in done.stderr and str((table / "labels.csv").resolve()) in done.stderr
    assert "Traceback" not in done.stderr
    (table / "labels.csv").write_text("")
    with pytest.raises(InputError, match="is empty"):
        index_dataset(table, "csv", "ds", tmp_path / "cache")


def test_directory_and_fifo_annotation_files_are_refused(tmp_path: Path) -> None:
    root = per_task_dataset(tmp_path, "va", TASK_LINES["va"])
    folder = root / "VA_Estimation_Challenge" / "Train_Set" / "video9.txt"
    folder.mkdir()

    def index():
        return run_cli("--cache-dir", tmp_path / "cache", "index", root, "--format", "abaw-va",
                       "--name", "ds", timeout=120)  # fmt: skip

    done = index()
    assert done.returncode == 2 and f"{folder.resolve()} is a directory" in done.stderr
    folder.rmdir()
    os.mkfifo(folder)  # a FIFO would block a reader (or the hash) forever
    done = index()
    assert done.returncode == 2 and f"{folder.resolve()} is a FIFO" in done.stderr
    folder.unlink()
    listed = tmp_path / "list_dir"
    listed.mkdir()
    with pytest.raises(InputError, match="is a directory"):
        index_dataset(root, "abaw-va", "ds", tmp_path / "cache", test_list=listed)
    fifo_csv = tmp_path / "labels.csv"
    os.mkfifo(fifo_csv)
    done = run_cli(
        "--cache-dir",
        tmp_path / "cache",
        "index",
        fifo_csv,
        "--format",
        "csv",
        "--name",
        "t",
        timeout=120,
    )
    assert done.returncode == 2 and "is a FIFO" in done.stderr
    assert not (tmp_path / "cache" / "ds").exists()


def test_unreadable_annotation_files_are_refused(tmp_path: Path) -> None:
    """A symlink loop cannot be read even by root; mode 000 stops everyone else."""
    root = per_task_dataset(tmp_path, "va", TASK_LINES["va"])
    loop = root / "VA_Estimation_Challenge" / "Train_Set" / "video9.txt"
    loop.symlink_to(loop.name)  # points at itself
    args = ["--cache-dir", tmp_path / "cache", "index", root, "--format", "abaw-va"]
    done = run_cli(*args, "--name", "ds")
    assert done.returncode == 2 and f"cannot read {loop}" in done.stderr
    assert "Traceback" not in done.stderr
    loop.unlink()
    if os.geteuid() != 0:  # root reads mode-000 files
        locked = root / "VA_Estimation_Challenge" / "Validation_Set" / "video4.txt"
        locked.chmod(0)
        done = run_cli(*args, "--name", "ds")
        assert done.returncode == 2 and f"cannot read {locked.resolve()}" in done.stderr


ESCAPES = [
    "../../../../tmp/x.jpg",
    "../cropped_aligned_other/v/00001.jpg",  # a sibling of the image root
    "video1/../../outside/00001.jpg",
    "/tmp/x/00001.jpg",
]


@pytest.mark.parametrize("key", ESCAPES)
@pytest.mark.parametrize("lenient", [False, True])
def test_keys_leaving_the_image_root_are_refused(tmp_path: Path, key: str, lenient: bool) -> None:
    root = write_mtl(tmp_path / "mtl", val=[VAL[0], f"{key},0.5,0.5,4,{AUS_ON}"])
    with pytest.raises(AnnotationError) as caught:
        index_dataset(root, "abaw-mtl", "ds", tmp_path / "cache", lenient=lenient)
    assert caught.value.line == 3 and caught.value.path.name == "validation_set_annotations.txt"
    assert "image root" in str(caught.value) and key in str(caught.value)

    table = write_csv(tmp_path / "table", f"image,expression\na/1.jpg,4\n{key},3\n", [])
    with pytest.raises(AnnotationError) as caught:
        index_dataset(table, "csv", "t", tmp_path / "cache", lenient=lenient)
    assert caught.value.line == 3 and "image root" in str(caught.value)
    assert not (tmp_path / "cache").exists()


def test_escaping_keys_in_test_lists_and_file_names(tmp_path: Path) -> None:
    root = write_mtl(tmp_path / "mtl")
    listed = root / "test_set_examples" / "MTL.txt"
    listed.write_text("image,valence,arousal,expression,aus\nt1/00001.jpg,\n../t1/00001.jpg,\n")
    done = run_cli(
        "--cache-dir", tmp_path / "cache", "index", root, "--format", "abaw-mtl", "--name", "ds"
    )
    assert done.returncode == 2
    assert f"{listed.resolve()}:3: the image key leaves the image root" in done.stderr
    annotations = per_task_dataset(tmp_path / "task", "expr", TASK_LINES["expr"])
    sneaky = annotations / "EXPR_Set" / "Train_Set" / "...txt"  # its stem is ".."
    sneaky.write_text(f"{TASK_HEADERS['expr']}\n4\n")
    with pytest.raises(AnnotationError, match="leaves the image root: '../00001.jpg'"):
        index_dataset(annotations, "abaw-expr", "ds", tmp_path / "cache")


def test_csv_absolute_paths_only_when_allowed(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere" / "face.jpg"
    touch_images(outside.parent, [outside.name])
    text = f"image,expression\na/1.jpg,4\n{outside},3\n{tmp_path}/gone.jpg,1\n"
    table = write_csv(tmp_path / "table", text, ["a/1.jpg"])
    args = ["--cache-dir", tmp_path / "cache", "index", table, "--format", "csv"]
    refused = run_cli(*args, "--name", "t")
    assert refused.returncode == 2 and "labels.csv:3: absolute image paths are refused" in (
        refused.stderr
    )
    run_cli(*args, "--name", "t", "--allow-absolute-paths", check=True)
    manifest = tmp_path / "cache" / "t" / "manifest.parquet"
    frame = read_manifest(manifest)
    assert frame["image"].tolist()[1] == str(outside)
    assert frame["has_image"].tolist() == [True, True, False]
    assert "up to date" in run_cli(*args, "--name", "t", "--allow-absolute-paths").stdout
    outside.unlink()  # an absolute image vanished: not "unchanged"
    again = run_cli(*args, "--name", "t", "--allow-absolute-paths", check=True)
    assert "wrote" in again.stdout
    assert read_manifest(manifest)["has_image"].tolist() == [True, False, False]
    text = "image,expression\n../x/1.jpg,4\n"
    (table / "labels.csv").write_text(text)  # the option allows absolute paths, nothing else
    done = run_cli(*args, "--name", "t", "--allow-absolute-paths")
    assert done.returncode == 2 and "leaves the image root" in done.stderr
    mtl = write_mtl(tmp_path / "mtl")
    done = run_cli(
        "--cache-dir",
        tmp_path / "cache",
        "index",
        mtl,
        "--format",
        "abaw-mtl",
        "--name",
        "m",
        "--allow-absolute-paths",
    )
    assert done.returncode == 2 and "does not apply" in done.stderr


def test_keys_inside_the_root_with_dots_are_fine(tmp_path: Path) -> None:
    table = write_csv(tmp_path / "table", "image,expression\na/../b/1.jpg,4\nv..w/2.jpg,1\n", [])
    frame = read_manifest(index_dataset(table, "csv", "t", tmp_path / "cache").manifest_path)
    assert frame["image"].tolist() == ["a/../b/1.jpg", "v..w/2.jpg"]


def test_missing_test_images_are_reported_loudly(tmp_path: Path) -> None:
    root = write_mtl(tmp_path / "mtl")
    (root / "test_data" / "cropped_aligned").rename(root / "cropped_aligned_2022_MTL_test")
    (root / "test_data").rmdir()
    args = ["--cache-dir", tmp_path / "cache", "index", root, "--format", "abaw-mtl"]
    done = run_cli(*args, "--name", "ds", check=True)
    assert "WARNING: 3 of 3 test rows (100%) have no image" in done.stdout
    assert "--test-image-root" in done.stdout
    fixed = run_cli(
        *args,
        "--name",
        "ds2",
        "--test-image-root",
        root / "cropped_aligned_2022_MTL_test",
        check=True,
    )
    assert "WARNING" not in fixed.stdout  # 1 of 3 listed frames without image is normal


# --- abaw-tasks: the three per-task folders as one dataset ------------------------------


def write_tasks(root: Path, expr_folder: str = "EXPR_Recognition_Challenge", au: bool = True):
    """VA, EXPR (and AU) folders over shared videos; `shared` is VA train but EXPR val."""
    annotations = root / "8th ABAW Annotations"
    write_task(
        annotations,
        "VA_Estimation_Challenge",
        TASK_HEADERS["va"],
        {"v1": ["0.1,0.2", "0.3,0.4"], "shared": ["0.5,0.6"]},
        {"v2": ["-0.1,-0.2"]},
    )
    write_task(
        annotations,
        expr_folder,
        TASK_HEADERS["expr"],
        {"v1": ["4", "5", "6"]},
        {"v2": ["1"], "shared": ["2"]},
    )
    tests = annotations / "test_set_examples"
    tests.mkdir()
    (tests / "CVPR_6th_ABAW_VA_test_set_example.txt").write_text(
        "image_location,valence,arousal\nt1/00001.jpg,0,0\nt1/00002.jpg,0,0\n"
    )
    (annotations / "Expression_Classification_Challenge_test_set_release.txt").write_text("t2\n")
    if au:
        write_task(
            annotations,
            "AU_Detection_Challenge",
            TASK_HEADERS["au"],
            {"v1": [AUS_ON]},
            {"v3": [AU_OFF]},
        )
        (tests / "CVPR_6th_ABAW_AU_test_set_example.txt").write_text(
            f"image_location,{TASK_HEADERS['au']}\nt1/00002.jpg,{AU_OFF}\n"
        )
    touch_images(
        root / "cropped_aligned",
        [
            "v1/00001.jpg",
            "v1/00002.jpg",
            "shared/00001.jpg",
            "t1/00001.jpg",
            "t2/00001.jpg",
            "t2/00002.jpg",
        ],
    )
    return annotations


@pytest.mark.parametrize(
    "expr_folder", ["EXPR_Recognition_Challenge", "EXPR_Classification_Challenge"]
)
def test_abaw_tasks_one_manifest(tmp_path: Path, expr_folder: str) -> None:
    annotations = write_tasks(tmp_path, expr_folder)
    args = ["--cache-dir", tmp_path / "cache", "index", annotations, "--format", "abaw-tasks"]
    done = run_cli(*args, "--name", "aw2", check=True)
    manifest = tmp_path / "cache" / "aw2" / "manifest.parquet"
    frame = read_manifest(manifest)
    meta = read_manifest_metadata(manifest)
    trainval = frame[frame["split"] != "test"]
    splits_images = (trainval["split"], trainval["image"])
    keyed = {(s, i): k for k, (s, i) in enumerate(zip(*splits_images, strict=True))}
    assert sorted(keyed) == sorted(
        [
            ("train", "v1/00001.jpg"),
            ("train", "v1/00002.jpg"),
            ("train", "v1/00003.jpg"),
            ("train", "shared/00001.jpg"),
            ("val", "v2/00001.jpg"),
            ("val", "shared/00001.jpg"),
            ("val", "v3/00001.jpg"),
        ]
    )
    assert trainval["split"].tolist() == ["train"] * 4 + ["val"] * 3
    row = keyed[("train", "v1/00001.jpg")]  # labelled by all three tasks
    assert frame.loc[row, "valence"] == pytest.approx(0.1) and frame.loc[row, "expression"] == 4
    assert frame.loc[row, list(AU_COLUMNS)].tolist() == [int(v) for v in AUS_ON.split(",")]
    row = keyed[("train", "v1/00003.jpg")]  # EXPR only
    assert frame.loc[row, "expression"] == 6 and np.isnan(frame.loc[row, "valence"])
    assert (frame.loc[row, list(AU_COLUMNS)] == -1).all()
    # `shared` is VA train and EXPR val: two rows, each with only its own split's labels.
    train_row, val_row = keyed[("train", "shared/00001.jpg")], keyed[("val", "shared/00001.jpg")]
    assert frame.loc[train_row, "valence"] == pytest.approx(0.5)
    assert frame.loc[train_row, "expression"] == -1
    assert frame.loc[val_row, "expression"] == 2 and np.isnan(frame.loc[val_row, "valence"])

    assert meta["format"] == "abaw-tasks" and meta["test_list"] is None
    lists = meta["test_lists"]
    assert list(lists) == ["va", "expr", "au"]
    assert lists["va"]["rows"] == [7, 9] and lists["va"]["style"] == "frame-lines"
    assert lists["expr"]["rows"] == [9, 11] and lists["expr"]["style"] == "video-names"
    assert lists["au"]["rows"] == [11, 12] and lists["au"]["header"].startswith("image_location")
    sources = {s["path"]: s["sha256"] for s in meta["sources"]}
    assert all(sources[entry["path"]] == entry["sha256"] for entry in lists.values())
    tests = frame["image"].tolist()
    assert tests[7:9] == ["t1/00001.jpg", "t1/00002.jpg"]
    assert tests[9:11] == ["t2/00001.jpg", "t2/00002.jpg"] and tests[11:] == ["t1/00002.jpg"]
    assert (frame["split"][7:] == "test").all() and len(frame) == 12
    # One extraction: t1/00002.jpg and shared/00001.jpg repeat, their features do not.
    assert len(distinct_images(frame)) == 10
    assert "test list au" in done.stdout and "rows 11..11" in done.stdout
    assert "WARNING: 1 of 1 au test rows (100%) have no image" in done.stdout
    assert "va test rows" not in done.stdout  # 1 of 2 without image is not "most"
    assert "up to date" in run_cli(*args, "--name", "aw2", check=True).stdout


def test_abaw_tasks_without_au_and_with_errors(tmp_path: Path) -> None:
    annotations = write_tasks(tmp_path, au=False)
    result = index_dataset(annotations, "abaw-tasks", "aw2", tmp_path / "cache")
    meta = read_manifest_metadata(result.manifest_path)
    assert list(meta["test_lists"]) == ["va", "expr"]
    frame = read_manifest(result.manifest_path)
    assert (frame[list(AU_COLUMNS)] == -1).all().all() and len(frame) == 10
    bad = annotations / "EXPR_Recognition_Challenge" / "Train_Set" / "v1.txt"
    bad.write_text(f"{TASK_HEADERS['expr']}\n4\n9\n")
    with pytest.raises(AnnotationError, match=r"v1.txt:3: expression '9'"):
        index_dataset(annotations, "abaw-tasks", "aw2", tmp_path / "cache")
    with pytest.raises(InputError, match="holds no task folder"):
        index_dataset(tmp_path / "cropped_aligned", "abaw-tasks", "aw3", tmp_path / "cache")
    with pytest.raises(InputError, match="does not apply"):
        index_dataset(annotations, "abaw-tasks", "aw3", tmp_path / "cache", test_list=bad)
    with pytest.raises(InputError, match="is one task's folder"):
        index_dataset(bad.parent.parent, "abaw-tasks", "aw3", tmp_path / "cache")
