"""Sharded extraction: shard files are joined into one feature file once all are present,
complete and computed alike (descriptor shards hold raw rows, finalized here)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.extract import registry
from affectpipe.extract.plan import ManifestView, read_manifest_view
from affectpipe.extract.results import BackboneReport, ExtractSummary
from affectpipe.extract.staleness import existing_identity
from affectpipe.fsutil import disk_full_as_error, file_lock

SHARD_KEYS = ("shard", "shard_rows", "total_rows")
_SHARD_FILE = re.compile(r"^(?P<backbone>.+)\.shard-(?P<i>\d+)-of-(?P<n>\d+)\.h5$")


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


def merge_scratch(final: Path) -> Path:
    """Where a merge keeps a descriptor's fitted state until the file is in place, so an
    interrupted merge resumes from it."""
    return final.with_name(f".{final.name}.merge")


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
    from affectpipe.extract.rawrows import ShardRows
    from affectpipe.extract.store import FAILED_LIST_CAP
    from affectpipe.features import (
        RUNTIME_ATTRS,
        part_dims,
        read_header,
        row_blocks,
        write_feature_file_streamed,
    )

    shards = _shard_files(paths, backbone)
    metas = []
    for path in shards:
        attrs = existing_identity(path)
        if attrs is None:
            raise InputError(f"{path} is incomplete: finish it with `pipeline extract --shard`")
        metas.append(attrs)
    # Not compared: what differs per shard, and the runtime (equal within parity).
    per_shard = (*SHARD_KEYS, "failed_count", "failed_images", "committed_rows", *RUNTIME_ATTRS)
    reference = {k: v for k, v in metas[0].items() if k not in per_shard}
    covered = 0
    for path, attrs in zip(shards, metas, strict=True):
        own = {k: v for k, v in attrs.items() if k not in per_shard}
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
            first = attrs["shard_rows"][0]
            for start, arrays in row_blocks(path):
                yield first + start, arrays

    failed = [f for attrs in metas for f in attrs.get("failed_images") or ()]
    merged = {
        **reference,
        "failed_count": sum(int(a.get("failed_count", 0)) for a in metas),
        "failed_images": failed[:FAILED_LIST_CAP],
        # shards may come from machines with other runtimes: name each
        **{
            key: ", ".join(dict.fromkeys(str(a[key]) for a in metas if a.get(key) is not None))
            for key in RUNTIME_ATTRS
            if any(a.get(key) is not None for a in metas)
        },
    }
    n_rows = len(view.images)
    scratch = merge_scratch(final)
    with disk_full_as_error(final, lambda: n_rows):
        if merged.pop("descriptor_stage", None) == "raw":
            descriptor = registry.get(backbone, "descriptor").load()()
            starts = [attrs["shard_rows"][0] for attrs in metas]
            key = json.dumps({"shards": reference}, sort_keys=True, default=str)
            rows = ShardRows(shards, starts, n_rows, key)
            done = descriptor.finalize_rows(rows, view.train_mask, scratch)
            merged = {**merged, **done.attrs, "groups": done.groups}
            blocks = done.chunks
            dims = {"embedding_dim": done.embedding_dim, "logits_dim": None}
        else:
            dims = part_dims(shards[0])
            blocks = chunks()
        write_feature_file_streamed(final, view.images, blocks, merged, **dims)
    shutil.rmtree(scratch, ignore_errors=True)  # a descriptor's fitted state, now written
    written = read_header(final)
    return BackboneReport(
        backbone=backbone,
        path=final,
        action="merged",
        rows=len(view.images),
        failed_count=written["failed_count"],
        failed_images=tuple(written["failed_images"]),
        detail=f"from {len(shards)} shards (shard files kept)",
    )
