"""Malicious and broken weight files: every one is refused with exit 2 naming the file, and
none runs code. The corpus is built at run time in tmp_path: nothing dangerous is committed.

Each payload that could run code would create the file MARKER; the tests check it never
appears, through the loading functions and through the real CLI (`--weights` and a file
planted in the weights cache).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from affectpipe.errors import InputError
from affectpipe.extract.backbones import get_backbone
from affectpipe.extract.weights import cached_path, get_weights_entry
from affectpipe.manifest import empty_manifest, write_manifest
from tests.conftest import run_cli

BACKBONES = ("mt-emotieffnet", "ddamfn")


class _Gadget:
    """Pickles as a call `func(*args)`: what a malicious pickle contains."""

    def __init__(self, func: Callable, *args: object):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


class _SetstateWritesFile(torch.nn.Module):
    """A module whose TorchScript __setstate__ (run by torch.jit.load) creates a file."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.marker = state[0]
        self.training = state[1]
        written = torch.from_file(state[0], shared=True, size=4, dtype=torch.uint8)
        written.fill_(33)
        if int(written.sum()) > 0:  # uses the result, so the write is not optimised away
            self.marker = state[0] + "!"


def _plain_zip(path: Path, pickle_bytes: bytes) -> None:
    """A torch.save-shaped zip archive around hand-made pickle bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle_bytes)
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")


def _safetensors(path: Path, header: bytes, data: bytes = b"", length: int | None = None) -> None:
    size = len(header) if length is None else length
    path.write_bytes(struct.pack("<Q", size) + header + data)


def _cyclic_module() -> torch.nn.Module:
    root = torch.nn.Sequential(torch.nn.Linear(2, 2))
    root[0].add_module("back", root)  # a child that contains its parent
    return root


def _deep_module(depth: int) -> torch.nn.Module:
    node = torch.nn.Linear(1, 1)
    for _ in range(depth):
        node = torch.nn.Sequential(node)
    return node


def build_corpus(folder: Path, marker: Path) -> dict[str, Path]:
    """name -> file. Payloads that could run code all target `marker`."""
    folder.mkdir(parents=True, exist_ok=True)
    touch = f"touch {marker}"
    corpus: dict[str, Path] = {}

    def add(name: str, suffix: str = ".pt") -> Path:
        corpus[name] = folder / f"{name}{suffix}"
        return corpus[name]

    torch.save({"state_dict": _Gadget(os.system, touch)}, add("gadget-os-system"))
    torch.save(
        {"model_state_dict": _Gadget(exec, f"open({str(marker)!r}, 'w')")}, add("gadget-exec")
    )
    torch.save(
        _Gadget(subprocess.call, ["touch", str(marker)]),
        add("gadget-subprocess-legacy"),
        _use_new_zipfile_serialization=False,
    )
    add("gadget-raw-pickle").write_bytes(pickle.dumps(_Gadget(os.system, touch), protocol=2))
    # A global under the timm prefix the HSEmotion reader maps to inert holders.
    timm_gadget = b"\x80\x02ctimm.models\nsystem\nq\x00X" + struct.pack("<I", len(touch))
    _plain_zip(add("gadget-timm-prefix"), timm_gadget + touch.encode() + b"\x85R.")
    with warnings.catch_warnings():  # torch.jit is deprecated, and still loaded by torch.load
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(_SetstateWritesFile(str(marker))), add("torchscript"))
    # The same archive with its TorchScript records renamed: still not a plain torch.save one.
    with (
        zipfile.ZipFile(corpus["torchscript"]) as source,
        zipfile.ZipFile(add("torchscript-renamed"), "w") as target,
    ):
        for info in source.infolist():
            name = info.filename.replace("/code/", "/extra/").replace("constants.", "consts.")
            target.writestr(name.replace(".py", ".txt"), source.read(info))
    torch.save(_cyclic_module(), add("cyclic-module"))
    torch.save(_deep_module(100), add("deep-modules"))
    depth = 50_000  # nested lists far deeper than the recursion limit
    _plain_zip(add("deep-lists"), b"\x80\x02" + b"]" * depth + b"a" * (depth - 1) + b".")
    _safetensors(add("st-length-beyond-file", ".safetensors"), b"{}", length=1 << 40)
    _safetensors(add("st-bad-json", ".safetensors"), b'{"w": {"dtype": "F32", ')
    entry = {"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4_000_000]}}
    _safetensors(add("st-offsets-beyond-data", ".safetensors"), json.dumps(entry).encode(), b"x")
    entry = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}
    _safetensors(add("st-shape-mismatch", ".safetensors"), json.dumps(entry).encode(), b"1234")
    rng = np.random.default_rng(0)
    add("random-bytes").write_bytes(rng.bytes(4096))
    add("random-after-pickle-header").write_bytes(b"\x80\x02" + rng.bytes(4096))
    good = io.BytesIO()
    torch.save({"w": torch.zeros(64, 64)}, good)
    add("truncated-zip").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    add("html", ".pth").write_text("<!DOCTYPE html><html><body>404 Not Found</body></html>\n")
    add("empty").write_bytes(b"")
    return corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path]:
    folder = tmp_path_factory.mktemp("corpus")
    marker = folder / "MARKER"
    return build_corpus(folder / "files", marker), marker


CASES = [
    "gadget-os-system",
    "gadget-exec",
    "gadget-subprocess-legacy",
    "gadget-raw-pickle",
    "gadget-timm-prefix",
    "torchscript",
    "torchscript-renamed",
    "cyclic-module",
    "deep-modules",
    "deep-lists",
    "st-length-beyond-file",
    "st-bad-json",
    "st-offsets-beyond-data",
    "st-shape-mismatch",
    "random-bytes",
    "random-after-pickle-header",
    "truncated-zip",
    "html",
    "empty",
]
REASONS = {
    "torchscript": "TorchScript archive",
    "torchscript-renamed": "not a plain torch.save archive",
    "cyclic-module": "cycle",
    "deep-modules": "too deep",
    "st-length-beyond-file": "header declares",
    "st-bad-json": "not valid JSON",
    "st-offsets-beyond-data": "beyond",
    "st-shape-mismatch": "do not fit",
    "truncated-zip": "truncated or corrupt",
    "html": "HTML",
    "empty": "empty",
}


def test_corpus_is_complete(corpus) -> None:
    assert sorted(corpus[0]) == sorted(CASES)


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("case", CASES)
def test_loading_refuses_without_running_code(corpus, case: str, backbone: str) -> None:
    files, marker = corpus
    path = files[case]
    with pytest.raises(InputError) as error:
        get_backbone(backbone).load(path)
    message = str(error.value)
    assert str(path) in message
    if case in REASONS and not (backbone == "ddamfn" and case in ("cyclic-module", "deep-modules")):
        assert REASONS[case] in message
    assert not marker.exists(), f"{case} ran code"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> Path:
    """A cache with a 2-image manifest (real face crops)."""
    root = tmp_path_factory.mktemp("tiny")
    images = root / "images"
    images.mkdir()
    sources = sorted((fixtures_dir / "images" / "bench112").glob("*.jpg"))[:2]
    for source in sources:
        shutil.copy(source, images / source.name)
    frame = empty_manifest(2)
    frame["image"] = [s.name for s in sources]
    frame["video"] = ["v0", "v0"]
    frame["split"] = ["train", "val"]
    frame["has_image"] = True
    cache = root / "cache"
    roots = {split: str(images) for split in ("train", "val", "test")}
    write_manifest(frame, cache / "tiny" / "manifest.parquet", {"image_roots": roots})
    return cache


def _extract(cache: Path, backbone: str, *extra: str, env: dict | None = None):
    return run_cli(
        "--cache-dir", cache, "extract", "--dataset", "tiny", "--backbones", backbone,
        "--batch-size", "2", "--workers", "0", *extra, env=env,
    )  # fmt: skip


# One CLI run per kind of file (each costs a process start with torch); the loading test
# above covers every case with both backbones through the same code.
CLI_CASES = [
    ("mt-emotieffnet", "torchscript"),
    ("mt-emotieffnet", "gadget-os-system"),
    ("mt-emotieffnet", "cyclic-module"),
    ("mt-emotieffnet", "st-length-beyond-file"),
    ("ddamfn", "gadget-subprocess-legacy"),
    ("ddamfn", "random-bytes"),
    ("ddamfn", "html"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "case"), CLI_CASES)
def test_cli_refuses_weights_option(corpus, tiny_dataset: Path, backbone: str, case: str) -> None:
    files, marker = corpus
    result = _extract(tiny_dataset, backbone, "--weights", f"{backbone}={files[case]}")
    assert result.returncode == 2, result.stderr
    assert str(files[case]) in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists(), f"{case} ran code"
    assert not (tiny_dataset / "tiny" / "features" / f"{backbone}.h5").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backbone", "case"),
    [("mt-emotieffnet", "torchscript"), ("ddamfn", "gadget-exec")],
)
def test_cli_refuses_file_planted_in_weights_cache(
    corpus, tiny_dataset: Path, tmp_path: Path, backbone: str, case: str
) -> None:
    files, marker = corpus
    home = tmp_path / "home"
    env = {"AFFECTPIPE_HOME": str(home)}
    planted = home / "weights" / cached_path(get_weights_entry(backbone)).name
    planted.parent.mkdir(parents=True)
    shutil.copy(files[case], planted)
    result = _extract(tiny_dataset, backbone, env=env)
    assert result.returncode == 2, result.stderr
    assert str(planted) in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists(), f"{case} ran code"
