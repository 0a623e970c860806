"""Extraction stage: frozen backbones over a dataset's distinct images -> ``features/*.h5``.

`run` plans the work (which files are stale, which weights, which rows of a shard), holds
one lock per output file, runs the shared decode/inference pass (`engine`) into resumable
part stores (`store`) and assembles each complete feature file atomically. `merge` joins
the shard files of a sharded extraction. Heavy modules (torch, the backbones) are imported
inside the functions so that importing this package, e.g. for the CLI, stays cheap.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from affectpipe import __version__
from affectpipe.config import DatasetPaths
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.fsutil import disk_full_as_error, file_lock, remove_stale_temps

if TYPE_CHECKING:
    from affectpipe.extract.images import Descriptor

logger = logging.getLogger(__name__)

DEFAULT_CNN_BACKBONES = ("mt-emotieffnet", "ddamfn")
CSV_BACKBONE = "openface-csv"
DEFAULT_CHUNK_ROWS = 2048  # rows per committed chunk: at most this much work is redone
RANDOM_INIT_SEED = 0
RANDOM_INIT_SHA256 = "random-init"
PRECISIONS = ("fp32", "bf16", "fp16")
# Attrs that say what a file was computed from; a complete file is reused only if they match.
IDENTITY_KEYS = (
    "backbone",
    "manifest_fingerprint",
    "package_version",
    "weights_sha256",
    "preprocessing",
    "precision",
    "random_init",
    "descriptor",
    "openface_dir",
    "shard",
    "shard_rows",
)
SHARD_KEYS = ("shard", "shard_rows", "total_rows")
_SHARD_FILE = re.compile(r"^(?P<backbone>.+)\.shard-(?P<i>\d+)-of-(?P<n>\d+)\.h5$")


def _openface_descriptor() -> Descriptor:
    from affectpipe.extract.backbones.openface import OpenFaceDescriptor

    return OpenFaceDescriptor()


# Descriptor backbones (not torch models): name -> factory of a picklable descriptor.
DESCRIPTORS: dict[str, Callable[[], Descriptor]] = {"openface": _openface_descriptor}


@dataclass(frozen=True)
class BackboneReport:
    """What happened to one backbone's feature file."""

    backbone: str
    path: Path
    action: str  # extracted | resumed | retried | skipped | merged | imported
    rows: int
    failed_count: int = 0
    failed_images: tuple[dict[str, str], ...] = ()
    images_per_s: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class ExtractSummary:
    reports: tuple[BackboneReport, ...]
    device: str
    random_init: bool = False

    def text(self) -> str:
        lines = []
        if self.random_init:
            lines.append(
                "WARNING: CNN backbones use RANDOM weights (--random-init): the features are "
                "meaningless for prediction (attrs random_init=True, weights_sha256=random-init)"
            )
        for r in self.reports:
            speed = f", {r.images_per_s:.1f} img/s" if r.images_per_s else ""
            line = f"{r.backbone}: {r.action} {r.path} ({r.rows} images{speed}"
            line += f", {r.failed_count} failed)" if r.failed_count else ")"
            if r.detail:
                line += f" {r.detail}"
            lines.append(line)
            examples = [f"{f['image']} ({f['reason']})" for f in r.failed_images[:5]]
            if examples:
                more = r.failed_count - len(examples)
                lines.append(
                    "  failed: " + "; ".join(examples) + (f"; +{more} more" if more else "")
                )
        return "\n".join(lines)


@dataclass(frozen=True)
class ManifestView:
    """What extraction needs from the manifest: distinct images, their files, train rows."""

    images: np.ndarray  # str [N], distinct images in first-occurrence order
    paths: list[str | None]  # absolute file of each distinct image (None: no image)
    train_mask: np.ndarray  # bool [N]: the image appears in a train row
    fingerprint: str  # sha256 of the image list (keys and whether each has a file)


def read_manifest_view(paths: DatasetPaths) -> ManifestView:
    from affectpipe.manifest import image_paths, read_manifest, read_manifest_metadata

    frame = read_manifest(paths.manifest)
    metadata = read_manifest_metadata(paths.manifest)
    first = ~frame["image"].duplicated().to_numpy()
    images = frame["image"].to_numpy(dtype=object)[first].astype(str)
    files = list(image_paths(frame, metadata)[first])
    train_images = set(frame.loc[frame["split"] == "train", "image"])
    train_mask = np.array([image in train_images for image in images], dtype=bool)
    digest = hashlib.sha256()
    for image, file in zip(images, files, strict=True):
        digest.update(f"{image}\t{int(file is not None)}\n".encode())
    return ManifestView(images, files, train_mask, digest.hexdigest())


def shard_range(n_rows: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """Rows [start, stop) of shard i of n (1-based): contiguous, deterministic, covering all."""
    if shard is None:
        return 0, n_rows
    i, n = shard
    if not (n >= 1 and 1 <= i <= n):
        raise InputError(f"bad shard {i}/{n}: use i/n with 1 <= i <= n")
    return (i - 1) * n_rows // n, i * n_rows // n


def output_path(paths: DatasetPaths, backbone: str, shard: tuple[int, int] | None) -> Path:
    if shard is None:
        return paths.features(backbone)
    return paths.features_dir / f"{backbone}.shard-{shard[0]}-of-{shard[1]}.h5"


def default_backbones(weights: Mapping[str, Path] | None = None) -> list[str]:
    """The CNN backbones whose weights resolve (given, cached or downloadable), plus openface."""
    from affectpipe.extract.backbones import get_backbone
    from affectpipe.extract.weights import resolve_weights

    chosen = []
    for name in DEFAULT_CNN_BACKBONES:
        spec = get_backbone(name)
        try:
            resolve_weights(spec.weights, _override(weights, name, spec.weights))
        except AffectpipeError as exc:
            logger.warning("skipping %s: %s", name, exc)
            continue
        chosen.append(name)
    return [*chosen, *DESCRIPTORS]


def _override(weights: Mapping[str, Path] | None, backbone: str, weights_name: str) -> Path | None:
    """`--weights NAME=PATH` may name the backbone or its weights entry."""
    weights = weights or {}
    return weights.get(backbone) or weights.get(weights_name)


@dataclass
class _Target:
    """One output file to produce in this run."""

    backbone: str
    kind: str  # model | descriptor | csv
    path: Path
    identity: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)  # extra attrs for the final file
    spec: Any = None  # BackboneSpec for models
    weights_path: Path | None = None
    descriptor: Any = None
    store: Any = None  # PartStore once opened
    retry_rows: np.ndarray | None = None  # --retry-failed: failed rows of the complete file


def _existing_identity(path: Path) -> dict[str, Any] | None:
    """Identity attrs of a complete file at `path`, or None if absent/incomplete/unreadable."""
    import h5py

    from affectpipe.features import decode_attrs

    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as handle:
            attrs = decode_attrs(handle.attrs)
    except Exception as exc:  # a damaged file of any kind is rebuilt, never trusted
        logger.warning("%s is unreadable (%s): rebuilding it", path, exc)
        return None
    return attrs if attrs.get("complete") else None


def _non_finite_ok_rows(path: Path) -> int:
    """Rows marked ok whose features hold NaN or inf (never written so: the file is damaged)."""
    import h5py

    from affectpipe.extract.store import H5_CHUNK_ROWS

    bad = 0
    with h5py.File(path, "r") as handle:
        ok = handle["ok"][...].astype(bool)
        for start in range(0, len(ok), H5_CHUNK_ROWS):
            block = slice(start, start + H5_CHUNK_ROWS)
            finite = np.ones(len(ok[block]), dtype=bool)
            for name in ("embedding", "logits"):
                if name in handle:
                    finite &= np.isfinite(handle[name][block]).all(axis=1)
            bad += int((ok[block] & ~finite).sum())
    return bad


def _is_current(target: _Target) -> dict[str, Any] | None:
    """The existing file's attrs when it is complete, sound and computed from the same inputs."""
    attrs = _existing_identity(target.path)
    if attrs is None:
        return None
    changed = [k for k in IDENTITY_KEYS if attrs.get(k) != target.identity.get(k)]
    if changed:
        logger.warning("%s is stale (changed: %s): recomputing", target.path, ", ".join(changed))
        return None
    try:
        bad = _non_finite_ok_rows(target.path)
    except Exception as exc:
        logger.warning("%s is unreadable (%s): rebuilding it", target.path, exc)
        return None
    if bad:
        logger.warning("%s has %d rows of NaN/inf features: rebuilding it", target.path, bad)
        return None
    return attrs


def _plan(
    paths: DatasetPaths,
    view: ManifestView,
    backbones: Sequence[str],
    *,
    weights: Mapping[str, Path] | None,
    random_init: bool,
    shard: tuple[int, int] | None,
    precision: str,
    openface_dir: Path | None,
) -> list[_Target]:
    from affectpipe.extract.backbones import backbone_names, get_backbone
    from affectpipe.extract.weights import resolve_weights

    start, stop = shard_range(len(view.images), shard)
    common: dict[str, Any] = {
        "manifest_fingerprint": view.fingerprint,
        "package_version": __version__,
    }
    if shard is not None:
        common.update(shard=f"{shard[0]}/{shard[1]}", shard_rows=[start, stop])
    targets = []
    for name in dict.fromkeys(backbones):  # keep order, drop repeats
        path = output_path(paths, name, shard)
        if name == CSV_BACKBONE:
            if shard is not None:
                raise InputError(f"{CSV_BACKBONE} imports CSVs in seconds: run it without --shard")
            if openface_dir is None:
                raise InputError(
                    f"{CSV_BACKBONE} needs --openface-dir (the OpenFace output folder)"
                )
            identity = {
                **common,
                "backbone": name,
                "openface_dir": str(Path(openface_dir).resolve()),
            }
            targets.append(_Target(name, "csv", path, identity))
        elif name in DESCRIPTORS:
            descriptor = DESCRIPTORS[name]()
            identity = {**common, "backbone": name, "descriptor": describe_descriptor(descriptor)}
            targets.append(_Target(name, "descriptor", path, identity, descriptor=descriptor))
        else:
            if name not in backbone_names():
                known = [*backbone_names(), *DESCRIPTORS, CSV_BACKBONE]
                raise InputError(f"unknown backbone {name!r}; known: {', '.join(known)}")
            spec = get_backbone(name)
            if random_init:
                weights_path, sha, official = None, RANDOM_INIT_SHA256, None
            else:  # fails here, before any work, with what to download and where to put it
                resolved = resolve_weights(spec.weights, _override(weights, name, spec.weights))
                weights_path, sha, official = (
                    resolved.path,
                    resolved.sha256,
                    resolved.official_sha256,
                )
            identity = {
                **common,
                "backbone": name,
                "weights_sha256": sha,
                "preprocessing": spec.preprocessing_attrs(),
                "precision": precision,
                "random_init": random_init,
            }
            attrs = {
                "weights_name": spec.weights,
                "official_sha256": official,
                "logit_names": list(spec.logit_names),
                "abaw_expr_index": spec.abaw_expr_index and list(spec.abaw_expr_index),
            }
            targets.append(
                _Target(name, "model", path, identity, attrs, spec=spec, weights_path=weights_path)
            )
    return targets


def describe_descriptor(descriptor: Descriptor) -> str:
    """Class, raw size and simple parameters: what decides a descriptor's rows."""
    params = {k: v for k, v in vars(descriptor).items() if isinstance(v, int | float | str)}
    kind = f"{type(descriptor).__module__}.{type(descriptor).__qualname__}"
    return json.dumps({"class": kind, "raw_dim": descriptor.raw_dim, **params}, sort_keys=True)


def build_model(spec: Any, weights_path: Path | None) -> Any:
    """A backbone's frozen network: from its weights file, or (None) the fixed-seed random
    init that feature files record as `random-init`."""
    import torch

    if weights_path is not None:
        return spec.load(weights_path)
    with torch.random.fork_rng(devices=[]):  # fixed-seed random init, global RNG untouched
        torch.manual_seed(RANDOM_INIT_SEED)
        return spec.build()


def _build_model(target: _Target) -> Any:
    return build_model(target.spec, target.weights_path)


def _finish(target: _Target, view: ManifestView, rows: tuple[int, int]) -> dict[str, Any]:
    """Assemble the target's complete file from its store; returns the attrs written.

    A full disk becomes one clear error (the store is kept, so a rerun resumes); the parts
    are removed only once the file is in place.
    """
    from affectpipe.extract.store import failure_attrs, write_feature_file_streamed

    store = target.store
    if target.retry_rows is not None:
        return _finish_retry(target, view, rows)
    start, stop = rows
    images = view.images[start:stop]
    with disk_full_as_error(target.path, store.committed_rows):
        failed = store.failures()
        attrs = {**target.identity, **target.attrs, **failure_attrs(images, failed)}
        if target.identity.get("shard"):
            attrs["total_rows"] = len(view.images)
        if target.kind == "descriptor" and not target.identity.get("shard"):
            raw, ok = store.load_rows("embedding"), store.load_rows("ok")
            train = view.train_mask[start:stop]
            embedding, groups, extra = target.descriptor.finalize(raw, ok, train)
            attrs = {**attrs, **extra, "groups": groups}
            chunks = iter([(0, {"embedding": embedding, "ok": ok})])
            dims = {"embedding_dim": embedding.shape[1], "logits_dim": None}
        else:
            if target.kind == "descriptor":
                attrs["descriptor_stage"] = "raw"  # finalized by `merge` once all shards exist
            if target.kind == "model":
                dims = {
                    "embedding_dim": target.spec.embedding_dim,
                    "logits_dim": len(target.spec.logit_names),
                }
            else:
                dims = {"embedding_dim": target.descriptor.raw_dim, "logits_dim": None}
            chunks = store.iter_chunks()
        write_feature_file_streamed(target.path, images, chunks, attrs, **dims)
    store.discard()
    return attrs


def _retry_rows(target: _Target, view: ManifestView, rows: tuple[int, int]) -> np.ndarray:
    """Rows of the complete file to re-attempt: ok false, and an image file to read."""
    import h5py

    with h5py.File(target.path, "r") as handle:
        failed = np.flatnonzero(~handle["ok"][...].astype(bool))
    return np.array([r for r in failed if view.paths[rows[0] + r] is not None], dtype=np.int64)


def _retry_store_target(path: Path) -> Path:
    """Where the re-attempted rows are committed (its own resumable part store)."""
    return path.with_name(f"{path.name}.retry")


def _finish_retry(target: _Target, view: ManifestView, rows: tuple[int, int]) -> dict[str, Any]:
    """Rewrite the complete file with its re-attempted rows replaced; other rows are copied."""
    import h5py

    from affectpipe.extract.store import H5_CHUNK_ROWS, failure_attrs, write_feature_file_streamed
    from affectpipe.features import decode_attrs

    store, redo = target.store, target.retry_rows
    images = view.images[rows[0] : rows[1]]
    with h5py.File(target.path, "r") as handle:
        attrs = decode_attrs(handle.attrs)
        still_failed = ~handle["ok"][...].astype(bool)
        names = [name for name in ("embedding", "logits", "ok") if name in handle]
        dims = {
            "embedding_dim": handle["embedding"].shape[1],
            "logits_dim": handle["logits"].shape[1] if "logits" in handle else None,
        }
    still_failed[redo] = False
    failed = {int(r): "no image file (has_image is false)" for r in np.flatnonzero(still_failed)}
    failed.update({int(redo[i]): reason for i, reason in store.failures().items()})
    for key in ("committed_rows", "complete"):
        attrs.pop(key, None)
    attrs.update(failure_attrs(images, failed))
    new = {name: store.load_rows(name) for name in names}

    def chunks():
        with h5py.File(target.path, "r") as handle:
            for start in range(0, len(images), H5_CHUNK_ROWS):
                arrays = {name: handle[name][start : start + H5_CHUNK_ROWS] for name in names}
                inside = np.flatnonzero((redo >= start) & (redo < start + H5_CHUNK_ROWS))
                for name in names:
                    arrays[name][redo[inside] - start] = new[name][inside]
                yield start, arrays

    with disk_full_as_error(target.path, lambda: len(images)):
        write_feature_file_streamed(target.path, images, chunks(), attrs, **dims)
    store.discard()
    return attrs


def _report(
    target: _Target, action: str, attrs: dict[str, Any], rows: int, speed=None
) -> BackboneReport:
    return BackboneReport(
        backbone=target.backbone,
        path=target.path,
        action=action,
        rows=rows,
        failed_count=int(attrs.get("failed_count", 0)),
        failed_images=tuple(attrs.get("failed_images") or ()),
        images_per_s=speed,
    )


def run(
    paths: DatasetPaths,
    backbones: Sequence[str],
    *,
    device: str = "cpu",
    weights: Mapping[str, Path] | None = None,
    random_init: bool = False,
    batch_size: int = 64,
    workers: int = 2,
    shard: tuple[int, int] | None = None,
    force: bool = False,
    amp: str | None = None,
    openface_dir: Path | None = None,
    progress: bool = True,
    channels_last: bool = True,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    retry_failed: bool = False,
    engine: Any = None,
) -> ExtractSummary:
    """Extract features of every distinct manifest image with each backbone.

    Empty `backbones` means `default_backbones(weights)`. Complete files computed from the
    same inputs are skipped unless `force`; interrupted runs resume from their committed
    chunks. `retry_failed` re-attempts the ok=false rows (those with an image file) of
    complete files and of committed chunks, leaving the other rows as they are.
    `shard=(i, n)` (1-based) computes rows block i of n into
    ``features/<backbone>.shard-i-of-n.h5`` (join them with `merge`). `amp` is None/"off",
    "bf16" or "fp16" (changes the features slightly: recorded as the file's precision).
    `engine` runs the passes elsewhere (e.g. `ray_engine.RayEngine`); None: in this process.
    """
    if batch_size < 1 or workers < 0 or chunk_rows < 1:
        raise InputError("batch size and chunk rows must be >= 1, workers >= 0")
    precision = "fp32" if amp in (None, "off", "fp32") else amp
    if precision not in PRECISIONS:
        raise InputError(f"bad --amp {amp!r}: use off, bf16 or fp16")
    view = read_manifest_view(paths)
    backbones = list(backbones) or default_backbones(weights)
    targets = _plan(
        paths,
        view,
        backbones,
        weights=weights,
        random_init=random_init,
        shard=shard,
        precision=precision,
        openface_dir=openface_dir,
    )
    if random_init and any(t.kind == "model" for t in targets):
        logger.warning("--random-init: CNN backbones use fixed-seed RANDOM weights, not official")
    from affectpipe.extract.engine import resolve_device

    torch_device = resolve_device(device) if engine is None else engine.connect(device)
    rows = shard_range(len(view.images), shard)
    reports: list[BackboneReport] = []
    with ExitStack() as stack:
        todo = []
        for target in targets:
            stack.enter_context(file_lock(target.path.with_name(f".{target.path.name}.lock")))
            remove_stale_temps(target.path)  # left by a run killed while writing the file
            current = None if force else _is_current(target)
            if current is None:
                todo.append(target)
                continue
            if retry_failed and target.kind != "csv":
                retry = _retry_rows(target, view, rows)
                if len(retry) and target.kind == "descriptor" and not shard:
                    logger.warning(
                        "%s: its projection is fitted on all train rows, so retrying %d failed "
                        "rows rebuilds the whole file",
                        target.path,
                        len(retry),
                    )
                    todo.append(target)
                    continue
                if len(retry):
                    _remove_parts(target.path, keep_retry=True)
                    target.retry_rows = retry
                    todo.append(target)
                    continue
            _remove_parts(target.path)  # a kill between the final rename and the cleanup
            reports.append(_report(target, "skipped", current, rows[1] - rows[0]))
        reports += _extract(
            todo,
            view,
            rows,
            device=torch_device,
            batch_size=batch_size,
            workers=workers,
            channels_last=channels_last,
            precision=precision,
            fresh=force,
            chunk_rows=chunk_rows,
            progress=progress,
            retry_failed=retry_failed,
            engine=engine,
        )
    order = {name: i for i, name in enumerate(backbones)}
    reports.sort(key=lambda r: order[r.backbone])
    where = str(torch_device) if engine is None else engine.describe()
    return ExtractSummary(tuple(reports), where, random_init)


def _remove_parts(path: Path, keep_retry: bool = False) -> None:
    """Remove the part stores of `path`, whose complete file is current (they are leftovers)."""
    from affectpipe.extract.store import parts_dir

    for target in (path, *(() if keep_retry else (_retry_store_target(path),))):
        folder = parts_dir(target)
        if folder.exists():
            logger.warning("%s is complete and current: removing leftover %s", path, folder)
            shutil.rmtree(folder, ignore_errors=True)


def _extract(
    targets: list[_Target],
    view: ManifestView,
    rows: tuple[int, int],
    *,
    device: Any,
    batch_size: int,
    workers: int,
    channels_last: bool,
    precision: str,
    fresh: bool,
    chunk_rows: int,
    progress: bool,
    retry_failed: bool = False,
    engine: Any = None,
) -> list[BackboneReport]:
    from affectpipe.extract.store import PartStore

    reports = []
    computed = [t for t in targets if t.kind != "csv"]
    resumed = set()
    for target in computed:
        header = {**target.identity, "rows": list(rows)}
        if target.retry_rows is not None:
            header["retry_rows"] = hashlib.sha256(target.retry_rows.tobytes()).hexdigest()
            store_path, n_rows = _retry_store_target(target.path), len(target.retry_rows)
        else:
            store_path, n_rows = target.path, rows[1] - rows[0]
        target.store = PartStore(store_path, header, n_rows, chunk_rows)
        if target.store.open(fresh=fresh):
            resumed.add(target.backbone)
            logger.warning(
                "%s: resuming after %d committed rows", target.path, target.store.committed_rows()
            )
        if retry_failed and target.retry_rows is None:
            dropped = target.store.drop_chunks_with_failures(
                lambda row: view.paths[rows[0] + row] is not None
            )
            if dropped:
                logger.warning("%s: redoing %d committed rows with failures", target.path, dropped)
    pass_options = {
        "device": device,
        "batch_size": batch_size,
        "workers": workers,
        "channels_last": channels_last,
        "precision": precision,
        "progress": progress,
        "engine": engine,
    }
    speeds: dict[str, float] = {}
    # One pass per chunk layout (a resumed store keeps the boundaries it was started with).
    full = [t for t in computed if t.retry_rows is None]
    for layout in sorted({t.store.chunk_rows for t in full}):
        group = [t for t in full if t.store.chunk_rows == layout and not t.store.is_done()]
        speeds.update(_pass(group, view.paths, rows[0], **pass_options))
    for target in (t for t in computed if t.retry_rows is not None):
        subset = [view.paths[rows[0] + r] for r in target.retry_rows]
        if not target.store.is_done():
            speeds.update(_pass([target], subset, 0, **pass_options))
    for target in computed:
        detail = ""
        if target.retry_rows is not None:
            recovered = len(target.retry_rows) - len(target.store.failures())
            detail = f"({len(target.retry_rows)} failed rows re-attempted, {recovered} recovered)"
        attrs = _finish(target, view, rows)
        action = "resumed" if target.backbone in resumed else "extracted"
        if target.retry_rows is not None:
            action = "retried"
        report = _report(target, action, attrs, rows[1] - rows[0], speeds.get(target.backbone))
        reports.append(dataclasses.replace(report, detail=detail))
    for target in (t for t in targets if t.kind == "csv"):
        with disk_full_as_error(target.path, lambda: 0):  # an import: nothing to resume
            reports.append(_import_csv(target, view))
    return reports


def _pass(
    group: list[_Target],
    paths: Sequence[str | None],
    offset: int,
    *,
    device: Any,
    batch_size: int,
    workers: int,
    channels_last: bool,
    precision: str,
    progress: bool,
    engine: Any = None,
) -> dict[str, float]:
    """One shared decode/inference pass over `group`'s missing chunks; returns img/s each.

    `engine` (e.g. the Ray engine) runs the pass elsewhere; None runs it in this process."""
    from affectpipe.extract.engine import (
        AMP_DTYPES,
        DescriptorJob,
        ModelJob,
        extract_pass,
        prepare_model,
        probe_batch,
    )

    if not group:
        return {}
    model_jobs = [
        ModelJob(
            t.spec,
            prepare_model(
                _build_model(t), device, channels_last=channels_last, probe=probe_batch(t.spec)
            )
            if engine is None
            else _build_model(t),  # another engine prepares models where they run
            t.store,
        )
        for t in group
        if t.kind == "model"
    ]
    descriptor_jobs = [DescriptorJob(t.descriptor, t.store) for t in group if t.kind != "model"]
    stats = (extract_pass if engine is None else engine.extract_pass)(
        paths,
        offset,
        model_jobs,
        descriptor_jobs,
        device=device,
        batch_size=batch_size,
        workers=workers,
        channels_last=channels_last,
        amp_dtype=AMP_DTYPES.get(precision),
        progress=progress,
    )
    return {t.backbone: stats.images_per_s for t in group}


def _import_csv(target: _Target, view: ManifestView) -> BackboneReport:
    from affectpipe.extract.backbones.openface_csv import import_openface_csv
    from affectpipe.features import read_feature_file

    openface_dir = Path(target.identity["openface_dir"])
    if not openface_dir.is_dir():
        raise InputError(f"--openface-dir {openface_dir} is not a folder")
    summary = import_openface_csv(
        list(view.images), view.paths, openface_dir, target.path, dict(target.identity)
    )
    written = read_feature_file(target.path)
    failed = int((~written.ok).sum())
    detail = ", ".join(f"{k}={v}" for k, v in summary.items() if isinstance(v, int | float | str))
    report = _report(target, "imported", {"failed_count": failed}, len(written.images))
    return BackboneReport(**{**report.__dict__, "detail": f"({detail})" if detail else ""})


def merge(
    paths: DatasetPaths, backbones: Sequence[str], *, progress: bool = True
) -> ExtractSummary:
    """Join ``features/<backbone>.shard-i-of-n.h5`` into ``<backbone>.h5`` for each backbone.

    Refuses (InputError) unless every shard 1..n is present once, complete, computed from
    the same inputs as the others and from the current manifest. Descriptor shards hold raw
    rows; they are finalized here (e.g. the HOG PCA fitted on train rows).
    """
    view = read_manifest_view(paths)
    reports = []
    for backbone in dict.fromkeys(backbones):
        final = paths.features(backbone)
        with file_lock(final.with_name(f".{final.name}.lock")):
            reports.append(_merge_one(paths, view, backbone, final))
    return ExtractSummary(tuple(reports), device="-")


def _shard_files(paths: DatasetPaths, backbone: str) -> list[Path]:
    """The complete set of shard files for `backbone`, in shard order, or InputError."""
    found: dict[int, dict[int, Path]] = {}
    for path in paths.features_dir.glob(f"{backbone}.shard-*-of-*.h5"):
        match = _SHARD_FILE.match(path.name)
        if match and match["backbone"] == backbone:
            found.setdefault(int(match["n"]), {})[int(match["i"])] = path
    if not found:
        raise InputError(f"no shard files {backbone}.shard-i-of-n.h5 in {paths.features_dir}")
    if len(found) > 1:
        raise InputError(f"{backbone}: shards of several splittings ({sorted(found)}): keep one")
    ((n, files),) = found.items()
    missing = [i for i in range(1, n + 1) if i not in files]
    if missing:
        raise InputError(
            f"{backbone}: shards {', '.join(f'{i}/{n}' for i in missing)} are missing in "
            f"{paths.features_dir}: run `pipeline extract --shard i/{n}` for them first"
        )
    return [files[i] for i in range(1, n + 1)]


def _merge_one(
    paths: DatasetPaths, view: ManifestView, backbone: str, final: Path
) -> BackboneReport:
    import h5py

    from affectpipe.extract.store import FAILED_LIST_CAP, write_feature_file_streamed
    from affectpipe.features import decode_attrs

    shards = _shard_files(paths, backbone)
    metas = []
    for path in shards:
        attrs = _existing_identity(path)
        if attrs is None:
            raise InputError(f"{path} is incomplete: finish it with `pipeline extract --shard`")
        metas.append(attrs)
    reference = {
        k: v
        for k, v in metas[0].items()
        if k not in (*SHARD_KEYS, "failed_count", "failed_images", "committed_rows")
    }
    covered = 0
    for path, attrs in zip(shards, metas, strict=True):
        own = {
            k: v
            for k, v in attrs.items()
            if k not in (*SHARD_KEYS, "failed_count", "failed_images", "committed_rows")
        }
        if own != reference:
            changed = sorted(
                k for k in own.keys() | reference.keys() if own.get(k) != reference.get(k)
            )
            raise InputError(
                f"{path} was computed differently from {shards[0]} ({', '.join(changed)})"
            )
        start, stop = attrs["shard_rows"]
        if start != covered:
            raise InputError(f"{path}: rows start at {start}, expected {covered}")
        covered = stop
    if reference.get("manifest_fingerprint") != view.fingerprint or covered != len(view.images):
        raise InputError(
            f"{backbone}: the shards were extracted from another manifest image list: "
            "re-extract them (or `pipeline extract` without --shard)"
        )

    def chunks():
        for path, attrs in zip(shards, metas, strict=True):
            with h5py.File(path, "r") as handle:
                arrays = {
                    name: handle[name][...]
                    for name in ("embedding", "logits", "ok")
                    if name in handle
                }
            yield attrs["shard_rows"][0], arrays

    failed = [f for attrs in metas for f in attrs.get("failed_images") or ()]
    merged = {
        **reference,
        "failed_count": sum(int(a.get("failed_count", 0)) for a in metas),
        "failed_images": failed[:FAILED_LIST_CAP],
    }
    n_rows = len(view.images)
    with disk_full_as_error(final, lambda: n_rows):
        if merged.pop("descriptor_stage", None) == "raw":
            descriptor = DESCRIPTORS[backbone]()
            parts = list(chunks())
            raw = np.concatenate([a["embedding"] for _, a in parts])
            ok = np.concatenate([a["ok"] for _, a in parts])
            embedding, groups, extra = descriptor.finalize(raw, ok, view.train_mask)
            merged = {**merged, **extra, "groups": groups}
            blocks = iter([(0, {"embedding": embedding, "ok": ok})])
            dims = {"embedding_dim": embedding.shape[1], "logits_dim": None}
        else:
            with h5py.File(shards[0], "r") as handle:
                dims = {
                    "embedding_dim": handle["embedding"].shape[1],
                    "logits_dim": handle["logits"].shape[1] if "logits" in handle else None,
                }
            blocks = chunks()
        write_feature_file_streamed(final, view.images, blocks, merged, **dims)
    with h5py.File(final, "r") as handle:
        written = decode_attrs(handle.attrs)
    return BackboneReport(
        backbone=backbone,
        path=final,
        action="merged",
        rows=len(view.images),
        failed_count=written["failed_count"],
        failed_images=tuple(written["failed_images"]),
        detail=f"from {len(shards)} shards (shard files kept)",
    )
