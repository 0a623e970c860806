"""Planning an extraction: the manifest's distinct images, which rows a shard holds, and one
`Target` per output file, with the identity attrs that decide whether a file is current.

Every backbone is looked up in `affectpipe.extract.registry`; weights are resolved here,
before any work, so a missing file fails at once with what to download and where to put it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from affectpipe import __version__
from affectpipe.config import DatasetPaths
from affectpipe.errors import AffectpipeError, InputError
from affectpipe.extract import registry

if TYPE_CHECKING:
    from affectpipe.extract.decode import Descriptor
    from affectpipe.extract.weights import ResolvedWeights

logger = logging.getLogger("affectpipe.extract")

RANDOM_INIT_SHA256 = "random-init"


@dataclass(frozen=True)
class ManifestView:
    """What extraction needs from the manifest: distinct images, their files, train rows."""

    images: np.ndarray  # str [N], distinct images in first-occurrence order
    paths: list[str | None]  # absolute file of each distinct image (None: no image)
    train_mask: np.ndarray  # bool [N]: the image appears in a train row
    fingerprint: str  # sha256 of the image list (keys and whether each has a file)
    train_fingerprint: str  # sha256 of train_mask: what a descriptor's fit on train rows saw


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
    train_digest = hashlib.sha256(np.packbits(train_mask).tobytes()).hexdigest()
    return ManifestView(images, files, train_mask, digest.hexdigest(), train_digest)


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


def weights_override(weights: Mapping[str, Path] | None, backbone: str) -> Path | None:
    """`--weights NAME=PATH` may name the backbone or its weights entry."""
    weights = weights or {}
    entry = registry.get(backbone).weights
    return weights.get(backbone) or (weights.get(entry.name) if entry else None)


def resolve_backbone_weights(
    backbone: str, weights: Mapping[str, Path] | None = None
) -> ResolvedWeights:
    """A verified local weight file for the model `backbone` (given, cached or downloaded)."""
    from affectpipe.extract.weights import ResolvedWeights, resolve_weights
    from affectpipe.fsutil import sha256_file

    entry = registry.get(backbone, "model").weights
    override = weights_override(weights, backbone)
    if entry is not None:
        return resolve_weights(entry.name, override)
    if override is None or not Path(override).is_file():
        raise InputError(
            f"backbone {backbone} registers no weight file: pass --weights {backbone}=PATH "
            "or --random-init"
        )
    return ResolvedWeights(Path(override), sha256_file(Path(override)), None)


def default_backbones(weights: Mapping[str, Path] | None = None) -> list[str]:
    """The default backbones of the registry; models only when their weights resolve
    (given, cached or downloadable)."""
    chosen = []
    for name in registry.default_names():
        if registry.get(name).kind == "model":
            try:
                resolve_backbone_weights(name, weights)
            except AffectpipeError as exc:
                logger.warning("skipping %s: %s", name, exc)
                continue
        chosen.append(name)
    return chosen


@dataclass
class Target:
    """One output file to produce in this run."""

    backbone: str
    kind: str  # a registry kind: model | descriptor | importer
    path: Path
    identity: dict[str, Any]
    attrs: dict[str, Any] = field(default_factory=dict)  # extra attrs for the final file
    spec: Any = None  # BackboneSpec for models
    weights_path: Path | None = None
    descriptor: Any = None
    importer: Any = None  # the import function of an importer
    store: Any = None  # PartStore once opened
    retry_rows: np.ndarray | None = None  # --retry-failed: failed rows of the complete file
    calibration: Any = None  # --precision int8: its `quantize.Calibration`


def plan(
    paths: DatasetPaths,
    view: ManifestView,
    backbones: Sequence[str],
    *,
    weights: Mapping[str, Path] | None,
    random_init: bool,
    shard: tuple[int, int] | None,
    precision: str,
    openface_dir: Path | None,
    spatial_grid: int | None = None,
) -> list[Target]:
    """One `Target` per backbone; `spatial_grid` adds the `spatial` part to the models'."""
    from affectpipe.extract.backbones import get_backbone
    from affectpipe.features import MAX_SPATIAL_GRID

    if spatial_grid is not None and not 1 <= spatial_grid <= MAX_SPATIAL_GRID:
        raise InputError(f"bad spatial grid {spatial_grid}: use 1..{MAX_SPATIAL_GRID}")

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
        entry = registry.get(name)
        if entry.kind == "importer":
            if shard is not None:
                raise InputError(f"{name} imports files in seconds: run it without --shard")
            if openface_dir is None:
                raise InputError(f"{name} needs --openface-dir (the folder of the outputs)")
            identity = {
                **common,
                "backbone": name,
                "openface_dir": str(Path(openface_dir).resolve()),
            }
            targets.append(Target(name, "importer", path, identity, importer=entry.load()))
        elif entry.kind == "descriptor":
            descriptor = entry.load()()
            identity = {
                **common,
                "backbone": name,
                "descriptor": describe_descriptor(descriptor),
                # its projection is fitted on the train images: a new split refits it
                "train_images": view.train_fingerprint,
            }
            targets.append(Target(name, "descriptor", path, identity, descriptor=descriptor))
        else:
            spec = get_backbone(name)
            if random_init:
                weights_path, sha, official = None, RANDOM_INIT_SHA256, None
            else:  # fails here, before any work, with what to download and where to put it
                resolved = resolve_backbone_weights(name, weights)
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
            if spatial_grid is not None:
                identity["spatial_grid"] = spatial_grid
            attrs = {
                "weights_name": entry.weights.name if entry.weights else None,
                "official_sha256": official,
                "logit_names": list(spec.logit_names),
                "abaw_expr_index": spec.abaw_expr_index and list(spec.abaw_expr_index),
            }
            targets.append(
                Target(name, "model", path, identity, attrs, spec=spec, weights_path=weights_path)
            )
    return targets


def describe_descriptor(descriptor: Descriptor) -> str:
    """Class, raw size and simple parameters: what decides a descriptor's rows."""
    params = {k: v for k, v in vars(descriptor).items() if isinstance(v, int | float | str)}
    kind = f"{type(descriptor).__module__}.{type(descriptor).__qualname__}"
    return json.dumps({"class": kind, "raw_dim": descriptor.raw_dim, **params}, sort_keys=True)
