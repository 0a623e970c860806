"""Assembling a target's complete feature file from its committed part store (a descriptor is
finalized here, e.g. its PCA fitted on the train rows), and the re-attempt of failed rows."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from affectpipe.extract.results import BackboneReport
from affectpipe.fsutil import disk_full_as_error

if TYPE_CHECKING:
    from affectpipe.extract.plan import ManifestView, Target


def finish(target: Target, view: ManifestView, rows: tuple[int, int]) -> dict[str, Any]:
    """Assemble the target's complete file from its store; returns the attrs written.

    A full disk becomes one clear error (the store is kept, so a rerun resumes); the parts
    are removed only once the file is in place.
    """
    from affectpipe.extract.rawrows import StoreRows
    from affectpipe.extract.store import failure_attrs
    from affectpipe.features import write_feature_file_streamed

    store = target.store
    if target.retry_rows is not None:
        return finish_retry(target, view, rows)
    start, stop = rows
    images = view.images[start:stop]
    with disk_full_as_error(target.path, store.committed_rows):
        failed = store.failures()
        saved = store.runtime() if target.kind == "model" else {}
        attrs = {**target.identity, **saved, **target.attrs, **failure_attrs(images, failed)}
        if target.identity.get("shard"):
            attrs["total_rows"] = len(view.images)
        if target.kind == "descriptor" and not target.identity.get("shard"):
            # The raw rows stay in the store, read back in blocks: memory does not grow with
            # the dataset. The store's folder keeps the descriptor's fitted state until the
            # file is in place, so an interrupted finalisation resumes from it.
            done = target.descriptor.finalize_rows(
                StoreRows(store), view.train_mask[start:stop], store.dir
            )
            attrs = {**attrs, **done.attrs, "groups": done.groups}
            chunks = done.chunks
            dims = {"embedding_dim": done.embedding_dim, "logits_dim": None}
        else:
            if target.kind == "descriptor":
                attrs["descriptor_stage"] = "raw"  # finalized by `merge` once all shards exist
            if target.kind == "model":
                dims = {
                    "embedding_dim": target.spec.embedding_dim,
                    "logits_dim": len(target.spec.logit_names),
                }
                if target.identity.get("spatial_grid"):
                    _, first = next(store.iter_chunks(["spatial"], starts=[0]))
                    dims["spatial_dim"] = first["spatial"].shape[1]
            else:
                dims = {"embedding_dim": target.descriptor.raw_dim, "logits_dim": None}
            chunks = store.iter_chunks()
        write_feature_file_streamed(target.path, images, chunks, attrs, **dims)
    store.discard()
    return attrs


def retry_store_target(path: Path) -> Path:
    """Where the re-attempted rows are committed (its own resumable part store)."""
    return path.with_name(f"{path.name}.retry")


def finish_retry(target: Target, view: ManifestView, rows: tuple[int, int]) -> dict[str, Any]:
    """Rewrite the complete file with its re-attempted rows replaced; other rows are copied."""
    from affectpipe.extract.store import failure_attrs
    from affectpipe.features import (
        DATA_NAMES,
        ok_mask,
        part_dims,
        read_header,
        row_blocks,
        write_feature_file_streamed,
    )

    store, redo = target.store, target.retry_rows
    images = view.images[rows[0] : rows[1]]
    attrs = read_header(target.path)
    still_failed = ~ok_mask(target.path)
    dims = part_dims(target.path)
    names = [name for name in DATA_NAMES if dims.get(f"{name}_dim") or name == "ok"]
    still_failed[redo] = False
    failed = {int(r): "no image file (has_image is false)" for r in np.flatnonzero(still_failed)}
    failed.update({int(redo[i]): reason for i, reason in store.failures().items()})
    for key in ("committed_rows", "complete"):
        attrs.pop(key, None)
    attrs.update(failure_attrs(images, failed))
    new = {name: store.load_rows(name) for name in names}

    def chunks():
        for start, arrays in row_blocks(target.path):
            stop = start + len(arrays["ok"])
            inside = np.flatnonzero((redo >= start) & (redo < stop))
            for name in names:
                arrays[name][redo[inside] - start] = new[name][inside]
            yield start, arrays

    with disk_full_as_error(target.path, lambda: len(images)):
        write_feature_file_streamed(target.path, images, chunks(), attrs, **dims)
    store.discard()
    return attrs


def target_report(
    target: Target, action: str, attrs: dict[str, Any], rows: int, speed=None
) -> BackboneReport:
    return BackboneReport(
        backbone=target.backbone,
        path=target.path,
        action=action,
        rows=rows,
        failed_count=int(attrs.get("failed_count", 0)),
        failed_images=tuple(attrs.get("failed_images") or ()),
        images_per_s=speed,
        runtime=_runtime_shown(attrs),
    )


def _runtime_shown(attrs: dict[str, Any]) -> str | None:
    """The runtime as the summary shows it, with a reduced precision beside it."""
    runtime, precision = attrs.get("runtime"), attrs.get("precision")
    return f"{runtime} {precision}" if runtime and precision not in (None, "fp32") else runtime
