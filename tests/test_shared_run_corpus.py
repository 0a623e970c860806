"""A shared run is untrusted input: a crafted-run corpus, built here at test time.

A small real run (OpenFace-style descriptor; a linear and a LightGBM expr head, blended half
and half) is exported; each case then changes a copy of it the way the audit of issue 25
did (LightGBM trees that crash or hang LightGBM, names leading outside the run, wrong JSON
types and depths, non-finite or degenerate numbers, heads changed since their blend, FIFOs
and device links, archive members that are unlisted, sparse, too many or too large) and
re-seals it (sha256 of every file recomputed, as a forger would), so that each case reaches
the check it is about. Every case goes through `pipeline predict --from-run` on the folder
and, where it can be packed, on a .tar.gz, and through `Predictor.from_export`; configs go
through `pipeline run --config`; odd inputs through `pipeline predict`. All in one driver
process (`corpus_driver.py`): a native crash or a hang fails the test naming the case.
Expected: exit 2 (bad input) or 1 (stale run: rerun blend) with a message, never a
traceback; 0 only where the run is usable.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import REPO, photo_dataset, run_cli

from affectpipe.pipeline import cli

pytestmark = pytest.mark.slow
LGB = "openface.embedding__lightgbm"
LIN = "openface.embedding__linear"
DRIVER_TIMEOUT = 900  # the whole corpus; each case also has its own 60 s alarm
# What no case may exceed: the driver process's resident memory (torch, dlib and LightGBM
# loaded take ~1 GB of it) and disk under its $TMPDIR (the real run is ~1 MB unpacked; the
# crafted archives carry unlisted 2 GiB and sparse 200 GiB members that must never be written).
PEAK_RSS_MB = 3072
PEAK_TMP_MB = 64


def _invoke(*args: Any) -> None:
    result = CliRunner().invoke(cli, [*map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def base(realfaces_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    table = photo_dataset(realfaces_dir, root, every=4)
    (root / "heads.toml").write_text(
        '[heads]\nmodels = ["linear", "lightgbm"]\ntemporal = false\n'
        "[heads.params.lightgbm]\nn_estimators = 5\nmin_data_in_leaf = 2\n"
    )
    cache = root / "cache"
    common = ("--cache-dir", cache)
    _invoke(*common, "index", root / "labels.csv", "--format", "csv", "--name", "faces")
    _invoke(*common, "extract", "--dataset", "faces", "--backbones", "openface", "--workers", "0")
    _invoke(
        *common,
        "heads",
        "--dataset",
        "faces",
        "--task",
        "expr",
        "--config",
        root / "heads.toml",
        "--no-progress",
    )
    _invoke(*common, "blend", "--dataset", "faces", "--out", root / "sub", "--no-report")
    # Both heads weighted, so the LightGBM head is part of the exported run.
    blend_json = cache / "faces" / "runs" / "default" / "blend" / "blend.json"
    document = json.loads(blend_json.read_text())
    document["tasks"]["expr"]["weights"]["expression"] = {LIN: 0.5, LGB: 0.5}
    blend_json.write_text(json.dumps(document))
    _invoke(*common, "export-run", "--dataset", "faces", "--out", root / "export")
    image = root / "face.jpg"
    shutil.copyfile(realfaces_dir / "images" / table["image"].iloc[0], image)
    booster = _head(root / "export", LGB)["model"]["fitted"]["map"]["boosters_"]["list"][0]
    assert re.search(r"^split_feature=\d", booster, re.M), "the LightGBM head has no split"
    return {"root": root, "export": root / "export", "image": image, "cache": cache}


# --- sealing: a forger recomputes every recorded sha256 --------------------------------------


def _head_path(folder: Path, name: str) -> Path:
    return folder / "heads" / "expr" / f"{name}.json"


def _head(folder: Path, name: str) -> dict:
    return json.loads(_head_path(folder, name).read_text())


def _booster(document: dict) -> str:
    return document["model"]["fitted"]["map"]["boosters_"]["list"][0]


def _set_booster(document: dict, text: str) -> None:
    document["model"]["fitted"]["map"]["boosters_"]["list"][0] = text


@dataclass
class Case:
    name: str
    expect: int
    head: Callable[[dict, dict], None] | None = None  # (LightGBM head, linear head)
    arrays: Callable[[dict], None] | None = None  # the linear head's tensors
    blend: Callable[[dict], None] | None = None
    export: Callable[[dict], None] | None = None
    raw: Callable[[Path], None] | None = None  # after sealing: files themselves
    env: dict[str, str] | None = None
    archive: bool = True  # also packed and run as a .tar.gz


def _build(case: Case, base_export: Path, folder: Path) -> None:
    from safetensors.numpy import load_file, save_file

    shutil.copytree(base_export, folder)
    lgb_doc, lin_doc = _head(folder, LGB), _head(folder, LIN)
    if case.arrays:
        arrays = _head_path(folder, LIN).with_suffix(".safetensors")
        tensors = dict(load_file(str(arrays)))
        case.arrays(tensors)
        save_file(tensors, str(arrays))
        lin_doc["arrays"]["sha256"] = _sha(arrays)
    if case.head:
        case.head(lgb_doc, lin_doc)
    for name, document in ((LGB, lgb_doc), (LIN, lin_doc)):
        _head_path(folder, name).write_text(_dumps(document))
    blend = json.loads((folder / "blend.json").read_text())
    for name in (LGB, LIN):
        blend["provenance"]["heads"]["expr"][name] = _sha(_head_path(folder, name))
    if case.blend:
        case.blend(blend)
    (folder / "blend.json").write_text(_dumps(blend))
    export = json.loads((folder / "export.json").read_text())
    export["files"] = {name: _sha(folder / name) for name in export["files"]}
    if case.export:
        case.export(export)
    (folder / "export.json").write_text(_dumps(export))
    if case.raw:
        case.raw(folder)


def _pack(folder: Path, archive: Path) -> bool:
    """The folder as a .tar.gz, as `export-run` packs it; False if it holds special files."""
    paths = sorted(folder.rglob("*"))
    if any(p.is_symlink() or not (p.is_file() or p.is_dir()) for p in paths):
        return False
    with tarfile.open(archive, "w:gz") as tar:
        for path in paths:
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return True


# --- the cases ---------------------------------------------------------------------------------


def _sub_first(pattern: str, repl: str) -> Callable[[dict, dict], None]:
    def change(lgb: dict, lin: dict) -> None:
        text, n = re.subn(pattern, repl, _booster(lgb), count=1, flags=re.M)
        assert n == 1, pattern
        _set_booster(lgb, text)

    return change


def _lgb(change: Callable[[str], str]) -> Callable[[dict, dict], None]:
    return lambda lgb, lin: _set_booster(lgb, change(_booster(lgb)))


def _fitted(which: str, key: str, value: Any) -> Callable[[dict, dict], None]:
    def change(lgb: dict, lin: dict) -> None:
        document = lgb if which == "lgb" else lin
        document["model"]["fitted"]["map"][key] = value

    return change


def _deep(depth: int) -> str:
    """A marker `_dumps` writes as `depth` nested lists (json.dumps itself would recurse)."""
    return f"@@deep{depth}@@"


def _dumps(document: Any) -> str:
    return re.sub(
        r'"@@deep(\d+)@@"', lambda m: "[" * int(m[1]) + "]" * int(m[1]), json.dumps(document)
    )


def _entry(blend: dict) -> dict:
    return blend["tasks"]["expr"]


def _weights(values: dict) -> Callable[[dict], None]:
    return lambda blend: _entry(blend)["weights"].update(expression=values)


def _fifo(name: str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        (folder / name).unlink()
        os.mkfifo(folder / name)

    return change


def _link(name: str, target: str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        (folder / name).unlink()
        os.symlink(target, folder / name)

    return change


def _write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        path = folder / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return change


def _outside_copy(folder: Path) -> None:
    """blend.json replaced by a link to an identical file outside the run: same sha256."""
    outside = folder.parent / "outside-blend.json"
    shutil.copyfile(folder / "blend.json", outside)
    (folder / "blend.json").unlink()
    os.symlink(outside, folder / "blend.json")


def _identity(change: Callable[[dict], None]) -> Callable[[dict], None]:
    return lambda export: change(export["backbones"]["openface"]["identity"])


CASES = [
    Case("valid run", 0),
    # Critical: LightGBM text LightGBM itself would crash or hang on.
    Case(
        "lgb split feature past the width",
        2,
        head=_sub_first(r"^split_feature=\d+", "split_feature=100000000"),
    ),
    Case(
        "lgb split feature negative", 2, head=_sub_first(r"^split_feature=\d+", "split_feature=-7")
    ),
    Case("lgb child cycle to the root", 2, head=_sub_first(r"^left_child=-?\d+", "left_child=0")),
    Case("lgb child out of range", 2, head=_sub_first(r"^right_child=-?\d+", "right_child=999")),
    Case("lgb leaf out of range", 2, head=_sub_first(r"^left_child=-?\d+", "left_child=-999")),
    Case("lgb NaN leaf", 2, head=_sub_first(r"^leaf_value=\S+", "leaf_value=nan")),
    Case("lgb NaN threshold", 2, head=_sub_first(r"^threshold=\S+", "threshold=nan")),
    Case("lgb categorical split", 2, head=_sub_first(r"^num_cat=0", "num_cat=1")),
    Case("lgb wrong tree_sizes", 0, head=_sub_first(r"^tree_sizes=.*$", "tree_sizes=1 2 3")),
    Case("lgb num_leaves huge", 2, head=_sub_first(r"^num_leaves=\d+", "num_leaves=99999999")),
    Case(
        "lgb max_feature_idx wrong",
        2,
        head=_sub_first(r"^max_feature_idx=\d+", "max_feature_idx=3"),
    ),
    Case(
        "lgb objective of another task",
        2,
        head=_sub_first(r"^objective=.*$", "objective=regression"),
    ),
    Case("lgb linear tree", 2, head=_sub_first(r"^is_linear=0", "is_linear=1")),
    Case("lgb not model text", 2, head=_lgb(lambda text: "import os; os.system('true')")),
    Case("lgb truncated", 2, head=_lgb(lambda text: text[: len(text) // 2])),
    Case("lgb booster an integer", 2, head=_fitted("lgb", "boosters_", 5)),
    Case(
        "lgb two boosters for expr",
        2,
        head=lambda lgb, lin: lgb["model"]["fitted"]["map"]["boosters_"]["list"].append(
            _booster(lgb)
        ),
    ),
    # Heads: types, shapes, finiteness, task.
    Case("linear coef NaN", 2, arrays=lambda t: t.update(t4=np.full_like(t["t4"], np.nan))),
    Case("linear coef bool", 2, arrays=lambda t: t.update(t4=t["t4"] > 0)),
    Case("linear coef int8", 2, arrays=lambda t: t.update(t4=t["t4"].astype(np.int8))),
    Case("linear coef wrong shape", 2, arrays=lambda t: t.update(t4=t["t4"][:3])),
    Case("scaler mean NaN", 2, arrays=lambda t: t.update(t0=np.full_like(t["t0"], np.nan))),
    Case("scaler scale zero", 2, arrays=lambda t: t.update(t1=np.zeros_like(t["t1"]))),
    Case("head task changed", 2, head=lambda lgb, lin: lin.update(task="va")),
    Case(
        "head model task changed",
        2,
        head=lambda lgb, lin: lin["model"]["params"]["map"].update(task="au"),
    ),
    Case(
        "head output columns changed", 2, head=lambda lgb, lin: lin.update(output_columns=["a"] * 8)
    ),
    Case("head unknown estimator", 2, head=lambda lgb, lin: lin["model"].update(estimator="Popen")),
    Case("head 200k deep", 2, head=lambda lgb, lin: lin.update(provenance=_deep(200_000))),
    Case("head 100 deep", 2, head=lambda lgb, lin: lin.update(provenance={"x": _deep(100)})),
    Case("head is a list", 2, head=lambda lgb, lin: lin.clear()),
    Case("head scaler a string", 2, head=lambda lgb, lin: lin.update(scaler="x")),
    Case("head output columns a number", 2, head=lambda lgb, lin: lin.update(output_columns=3)),
    Case("head extra key", 2, head=lambda lgb, lin: lin.update(evil=1)),
    Case("head arrays sha wrong", 2, head=lambda lgb, lin: lin["arrays"].update(sha256="0" * 64)),
    # blend.json: names, numbers, types.
    Case(
        "blend candidate climbing out",
        2,
        blend=lambda b: _entry(b).update(candidates=["../../../../tmp/x", LIN]),
    ),
    Case("blend candidate absolute", 2, blend=_weights({"/etc/x": 1.0})),
    Case(
        "blend weights a head not exported",
        2,
        blend=lambda b: (
            _entry(b)["candidates"].append("other__linear"),
            _entry(b)["weights"].update(expression={"other__linear": 1.0}),
        ),
    ),
    Case("blend weight 1e308", 2, blend=_weights({LIN: 1e308, LGB: 1e308})),
    Case("blend weights all zero", 2, blend=_weights({LIN: 0.0, LGB: 0.0})),
    Case("blend weight NaN", 2, blend=_weights({LIN: float("nan"), LGB: 1.0})),
    Case("blend weight boolean", 2, blend=_weights({LIN: True})),
    Case("blend weight negative", 2, blend=_weights({LIN: -1.0, LGB: 2.0})),
    Case("blend weights empty", 2, blend=_weights({})),
    Case(
        "blend half_width negative", 2, blend=lambda b: _entry(b)["smoothing"].update(half_width=-5)
    ),
    Case(
        "blend half_width huge", 2, blend=lambda b: _entry(b)["smoothing"].update(half_width=10**12)
    ),
    Case(
        "blend half_width a string",
        2,
        blend=lambda b: _entry(b)["smoothing"].update(half_width="3"),
    ),
    Case("blend kernel unknown", 2, blend=lambda b: _entry(b)["smoothing"].update(kernel="x")),
    Case(
        "blend offsets NaN",
        2,
        blend=lambda b: _entry(b).update(offsets={"offsets": [float("nan")] * 8}),
    ),
    Case("blend offsets short", 2, blend=lambda b: _entry(b).update(offsets={"offsets": [0.0]})),
    Case(
        "blend log prior inf",
        2,
        blend=lambda b: _entry(b).update(
            logit_adjustment={"tau": 1.0, "log_prior": [float("-inf")] * 8}
        ),
    ),
    Case(
        "blend gate threshold NaN",
        2,
        blend=lambda b: _entry(b).update(gating={"source": "openface", "threshold": float("nan")}),
    ),
    Case(
        "blend gate source unknown",
        2,
        blend=lambda b: _entry(b).update(gating={"source": "../x", "threshold": 0.5}),
    ),
    Case("blend tasks empty", 2, blend=lambda b: b.update(tasks={})),
    Case("blend tasks a list", 2, blend=lambda b: b.update(tasks=["expr"])),
    Case("blend unknown task", 2, blend=lambda b: b["tasks"].update(mood=_entry(b))),
    Case("blend 200k deep", 2, blend=lambda b: b.update(notes=_deep(200_000))),
    Case("blend a number", 2, blend=lambda b: (b.clear(), b.update(tasks=5))),
    # The fingerprint chain: heads changed since their blend.
    Case("blend without head fingerprints", 1, blend=lambda b: b["provenance"].pop("heads")),
    Case(
        "blend fingerprint of another head",
        1,
        blend=lambda b: b["provenance"]["heads"]["expr"].update({LIN: "0" * 64}),
    ),
    # export.json: types, emptiness, names.
    Case("export files empty", 2, export=lambda e: e.update(files={})),
    Case("export heads empty", 2, export=lambda e: e.update(heads={})),
    Case("export tasks a string", 2, export=lambda e: e.update(tasks="expr")),
    Case("export files a list", 2, export=lambda e: e.update(files=["blend.json"])),
    Case(
        "export file climbing out",
        2,
        export=lambda e: e["files"].update({"../../etc/passwd": "0" * 64}),
    ),
    Case("export file absolute", 2, export=lambda e: e["files"].update({"/etc/passwd": "0" * 64})),
    Case(
        "export head not listed",
        2,
        export=lambda e: e["files"].pop(f"heads/expr/{LGB}.safetensors"),
    ),
    Case("export sha wrong", 2, export=lambda e: e["files"].update({"blend.json": "0" * 64})),
    Case("export format wrong", 2, export=lambda e: e.update(format="affectpipe-run/9")),
    Case("export extra key", 2, export=lambda e: e.update(evil=1)),
    Case("export 200k deep", 2, export=lambda e: e.update(source=_deep(200_000))),
    Case("export head name climbing out", 2, export=lambda e: e["heads"]["expr"].append("../../x")),
    Case(
        "export arrays path climbing out",
        2,
        export=lambda e: e["backbones"]["openface"].update(arrays="../x.safetensors"),
    ),
    Case(
        "export group reversed",
        2,
        export=lambda e: e["backbones"]["openface"]["groups"].update(hog=[200, 100]),
    ),
    Case(
        "export group a string",
        2,
        export=lambda e: e["backbones"]["openface"]["groups"].update(hog="all"),
    ),
    Case(
        "identity random_init with weights",
        2,
        export=_identity(lambda i: i.update(random_init=True, weights_sha256="a" * 64)),
    ),
    Case(
        "identity random_init alone (warned)",
        0,
        export=_identity(lambda i: i.update(random_init=True)),
    ),
    Case("identity unknown key", 2, export=_identity(lambda i: i.update(evil=1))),
    Case("identity descriptor a number", 2, export=_identity(lambda i: i.update(descriptor=3))),
    # Files themselves: not regular, outside, unreadable, too large.
    Case("blend.json a FIFO", 2, raw=_fifo("blend.json")),
    Case("export.json a FIFO", 2, raw=_fifo("export.json")),
    Case("head a FIFO", 2, raw=_fifo(f"heads/expr/{LIN}.json")),
    Case("blend.json a link to /dev/zero", 2, raw=_link("blend.json", "/dev/zero")),
    Case("export.json a link to /dev/zero", 2, raw=_link("export.json", "/dev/zero")),
    Case(
        "head arrays a link to /dev/zero",
        2,
        raw=_link(f"heads/expr/{LIN}.safetensors", "/dev/zero"),
    ),
    Case("blend.json a link outside the run", 2, raw=_outside_copy),
    Case("export.json 17 MB of spaces", 2, raw=_write("export.json", " " * (17 << 20))),
    Case("export.json not UTF-8", 2, raw=_write("export.json", b"\xff\xfe{}")),
    Case("export.json not JSON", 2, raw=_write("export.json", "{")),
    Case("export.json missing", 2, raw=lambda folder: (folder / "export.json").unlink()),
    Case(
        "descriptor arrays garbage",
        2,
        raw=_write("backbones/openface.safetensors", b"x" * 64),
        export=lambda e: e["files"].update(
            {"backbones/openface.safetensors": hashlib.sha256(b"x" * 64).hexdigest()}
        ),
    ),
    Case("a pickle planted", 2, raw=_write("heads/expr/model.pkl", b"\x80\x04.")),
    # A folder's unlisted files are never read; an archive's are refused (ARCHIVES below).
    Case("an unlisted file (ignored)", 0, raw=_write("notes.txt", "hello"), archive=False),
]


# --- archives crafted member by member ----------------------------------------------------------


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], fmt=tarfile.PAX_FORMAT):
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _base_members(export: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [
        _file(p.relative_to(export).as_posix(), p.read_bytes())
        for p in sorted(export.rglob("*"))
        if p.is_file()
    ]


def _special(name: str, kind: bytes, **attrs: Any) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, None


ARCHIVES: dict[str, tuple[Callable[[list], list], int, dict[str, str]]] = {
    "archive valid": (lambda m: m, 0, {}),
    "archive unlisted member over the cap": (
        lambda m: [*m, _file("junk.bin", b"\0" * (6 << 20))],
        2,
        {"AFFECTPIPE_MAX_RUN_MB": "5"},
    ),
    "archive unlisted small member": (lambda m: [*m, _file("junk.bin", b"x")], 2, {}),
    "archive too many members": (
        lambda m: [*m, *(_file(f"e/{i}", b"") for i in range(10_001))],
        2,
        {},
    ),
    "archive sparse member": (
        lambda m: [*m, _special("blend2.json", tarfile.GNUTYPE_SPARSE)],
        2,
        {},
    ),
    "archive symlink member": (
        lambda m: [*m, _special("link", tarfile.SYMTYPE, linkname="/etc/passwd")],
        2,
        {},
    ),
    "archive hard link member": (
        lambda m: [*m, _special("hard", tarfile.LNKTYPE, linkname="export.json")],
        2,
        {},
    ),
    "archive device member": (
        lambda m: [*m, _special("dev", tarfile.CHRTYPE, devmajor=1, devminor=5)],
        2,
        {},
    ),
    "archive fifo member": (lambda m: [*m, _special("fifo", tarfile.FIFOTYPE)], 2, {}),
    "archive absolute member": (lambda m: [*m, _file("/tmp/affectpipe-escaped", b"x")], 2, {}),
    "archive climbing member": (lambda m: [*m, _file("../escaped", b"x")], 2, {}),
    "archive duplicate member": (lambda m: [*m, _file("blend.json", b"{}")], 2, {}),
    "archive without export.json": (lambda m: [x for x in m if x[0].name != "export.json"], 2, {}),
    "archive of garbage": (None, 2, {}),
}


def _write_archive(name: str, build, export: Path, path: Path) -> None:
    if build is None:
        path.write_bytes(b"\x1f\x8b" + os.urandom(1000))
        return
    fmt = tarfile.GNU_FORMAT if "sparse" in name else tarfile.PAX_FORMAT
    _tar(path, build(_base_members(export)), fmt)


# --- configs and inputs -------------------------------------------------------------------------

CONFIGS = {
    "config seed a string": '[heads]\nseed = "x"\n',
    "config temporal a string": '[heads]\ntemporal = "false"\n',
    "config backbones numbers": "[run]\nbackbones = [1, 2]\n",
    "config max_filled nan": "[run]\nmax_filled = nan\n",
    "config max_filled 2": "[run]\nmax_filled = 2.0\n",
    "config batch_size 0": "[run]\nbatch_size = 0\n",
    "config tasks unknown": '[run]\ntasks = ["mood"]\n',
    "config heads a number": "heads = 5\n",
    "config candidate without model": '[[heads.candidates]]\ntask = "expr"\nfeatures = "x"\n',
    "config unknown table": "[evil]\nx = 1\n",
    "config deep": "[run]\nx = " + "[" * 2000 + "]" * 2000 + "\n",
    "config not TOML": "[run\n",
    "config not UTF-8": b"\xff\xfe[run]",
}


def _video_without_frames(path: Path) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()  # the header, and no frame


def _inputs(root: Path, image: Path) -> dict[str, tuple[list[Path], int]]:
    """Odd inputs next to one good image: each must end in a row (face_ok false)."""
    made: dict[str, tuple[list[Path], int]] = {}
    folder = root / "inputs"
    folder.mkdir()
    fifo = folder / "pipe.mp4"
    os.mkfifo(fifo)
    made["input a FIFO named .mp4"] = ([fifo], 1)
    fifo_dir = folder / "with-fifo"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "pipe.mp4")
    shutil.copyfile(image, fifo_dir / "a.jpg")
    made["input a folder holding a FIFO .mp4"] = ([fifo_dir], 2)
    zero = folder / "zero.mp4"
    _video_without_frames(zero)
    made["input a video without frames, alone"] = ([zero], 1)
    empty = folder / "empty.mp4"
    empty.write_bytes(b"")
    made["input an empty .mp4 next to an image"] = ([image, empty], 2)
    garbage = folder / "garbage.mp4"
    garbage.write_bytes(os.urandom(4096))
    made["input a garbage .mp4"] = ([garbage], 1)
    zero_link = folder / "zero.jpg"
    os.symlink("/dev/zero", zero_link)
    made["input a link to /dev/zero named .jpg"] = ([zero_link, image], 2)
    return made


# --- the test -----------------------------------------------------------------------------------


def test_crafted_corpus_ends_in_exit_codes_never_crashes(base: dict[str, Path], tmp_path: Path):
    image = base["image"]
    cases: list[dict] = []
    expected: dict[str, int] = {}
    outputs: dict[str, tuple[Path, int]] = {}

    def add(name: str, kind: str, args: list, expect: int, env: dict | None = None) -> None:
        cases.append({"name": name, "kind": kind, "args": [str(a) for a in args], "env": env or {}})
        expected[name] = expect

    def predict(name: str, run: Path, expect: int, env: dict | None = None) -> None:
        out = tmp_path / "out" / f"{len(cases)}.csv"
        add(
            f"{name} [predict --from-run {'archive' if run.suffix == '.gz' else 'folder'}]",
            "cli",
            [
                "--cache-dir",
                tmp_path / "nocache",
                "predict",
                "--from-run",
                run,
                "--out",
                out,
                "--workers",
                "0",
                "--no-progress",
                image,
            ],
            expect,
            env,
        )

    built = tmp_path / "cases"
    built.mkdir()
    for i, case in enumerate(CASES):
        folder = built / f"{i:03d}" / "run"
        _build(case, base["export"], folder)
        predict(case.name, folder, case.expect, case.env)
        add(f"{case.name} [Predictor.from_export]", "api", [folder, image], case.expect, case.env)
        archive = folder.parent / "run.tar.gz"
        if case.archive and _pack(folder, archive):
            predict(case.name, archive, case.expect, case.env)
    for name, (build, expect, env) in ARCHIVES.items():
        archive = built / f"{name.replace(' ', '-')}.tar.gz"
        _write_archive(name, build, base["export"], archive)
        predict(name, archive, expect, env)
        add(f"{name} [Predictor.from_export]", "api", [archive, image], expect, env)
    for name, text in CONFIGS.items():
        config = built / f"{name.replace(' ', '-')}.toml"
        config.write_bytes(text if isinstance(text, bytes) else text.encode())
        add(
            name,
            "cli",
            ["--cache-dir", tmp_path / "nocache", "run", "--config", config, "--dataset", "faces"],
            2,
        )
    for name, (paths, rows) in _inputs(tmp_path, image).items():
        out = tmp_path / "out" / f"{len(cases)}.csv"
        add(
            name,
            "cli",
            [
                "--cache-dir",
                tmp_path / "nocache",
                "predict",
                "--from-run",
                base["export"],
                "--out",
                out,
                "--workers",
                "0",
                "--no-progress",
                *paths,
            ],
            0,
        )
        outputs[name] = (out, rows)

    cases_file, results_file = tmp_path / "cases.json", tmp_path / "results.jsonl"
    cases_file.write_text(json.dumps(cases))
    scratch = tmp_path / "tmp"  # the driver's $TMPDIR, measured
    scratch.mkdir()
    env = {
        **os.environ,
        "TMPDIR": str(scratch),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    try:
        done = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).with_name("corpus_driver.py")),
                cases_file,
                results_file,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT,
        )
        crash = None if done.returncode == 0 else f"driver exited {done.returncode}"
    except subprocess.TimeoutExpired:
        crash = f"driver still running after {DRIVER_TIMEOUT} s (a hang)"
    lines = [json.loads(line) for line in results_file.read_text().splitlines()]
    results = {r["name"]: r for r in lines if "outcome" in r}
    started = [r["name"] for r in lines if r.get("started")]
    assert crash is None, f"{crash} in case {started[-1]!r}"

    wrong = {}
    for name, expect in expected.items():
        result = results[name]
        if result["outcome"] != "exit" or result["code"] != expect:
            wrong[name] = copy.deepcopy(result)
        elif expect != 0 and not result["stderr"].strip():
            wrong[name] = {"outcome": "refused without a message"}
    refused = sum(results[n]["code"] in (1, 2) for n in expected if n not in wrong)
    peak_rss = max(r["peak_rss_mb"] for r in results.values())
    peak_tmp = max(r["peak_tmp_mb"] for r in results.values())
    summary = (
        f"{len(expected)} tried, {refused} refused cleanly (exit 1/2 with a message), "
        f"{len(expected) - refused - len(wrong)} accepted (exit 0), {len(wrong)} other; "
        f"peak RSS {peak_rss:.0f} MB, peak temporary disk {peak_tmp:.1f} MB"
    )
    print(summary)
    for name, result in results.items():
        assert result["peak_rss_mb"] < PEAK_RSS_MB, (name, result["peak_rss_mb"])
        assert result["peak_tmp_mb"] < PEAK_TMP_MB, (name, result["peak_tmp_mb"])
    assert not wrong, summary + "\n" + json.dumps(wrong, indent=1)[:20000]

    for name, (out, rows) in outputs.items():
        table = pd.read_csv(out)
        assert len(table) == rows, name
        failed = ~table["face_ok"]
        assert failed.sum() >= 1, name
        assert table.loc[failed, "reason"].notna().all(), name
        assert table.loc[~failed, "reason"].isna().all(), name
    assert not Path("/tmp/affectpipe-escaped").exists()
    assert not (tmp_path / "escaped").exists()
    # The driver cannot see log lines (logging keeps the first case's stderr): the real CLI.
    random_init = next(i for i, c in enumerate(CASES) if c.name.endswith("(warned)"))
    warned = run_cli(
        "predict",
        "--from-run",
        built / f"{random_init:03d}" / "run",
        "--out",
        tmp_path / "warned.csv",
        "--workers",
        "0",
        "--no-progress",
        image,
    )
    assert warned.returncode == 0 and "RANDOMLY INITIALISED" in warned.stderr, warned.stderr
