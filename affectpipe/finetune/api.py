"""The fine-tuning stage's public function (`pipeline finetune` calls it): see `finetune`."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from affectpipe.config import DatasetPaths
from affectpipe.errors import InputError
from affectpipe.finetune.options import FinetuneOptions
from affectpipe.finetune.recipes import Recipe
from affectpipe.machine import default_workers

if TYPE_CHECKING:
    from affectpipe.finetune.training import FinetuneResult

logger = logging.getLogger(__name__)


def finetune(
    paths: DatasetPaths,
    recipe: Recipe,
    *,
    backbone: str | None = None,
    name: str | None = None,
    tasks: Sequence[str] = (),
    device: str = "cpu",
    weights: Mapping[str, Path] | None = None,
    random_init: bool = False,
    workers: int | None = FinetuneOptions.workers,
    seed: int = FinetuneOptions.seed,
    max_steps: int | None = FinetuneOptions.max_steps,
    checkpoint_every: int = FinetuneOptions.checkpoint_every,
    fresh: bool = FinetuneOptions.fresh,
    force: bool = FinetuneOptions.force,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune `backbone` (default: the recipe's) on `paths`' dataset with `recipe`.

    `name` (default: the recipe's name) makes the variant ``BACKBONE@NAME`` (with
    ``-bagK`` per bag when the recipe bags). `tasks` restricts the recipe's tasks; tasks
    without labelled train rows are skipped (named in the result). The base weights are
    resolved like `pipeline extract`'s (``--weights NAME=PATH``, the cache, a download),
    or fixed-seed random (`random_init`, for tests). `max_steps` caps the optimiser steps
    (a short timed run); `checkpoint_every` adds a checkpoint every that many steps to
    those at each epoch end. `workers` None: 0 on the CPU (the training step takes every
    core), `machine.default_workers` on a GPU. A killed run resumes from its checkpoint when
    started again with the same settings (`fresh` discards it). An existing variant of the
    same name is kept when it was trained from the same inputs and settings, else refused
    unless `force`.
    """
    from affectpipe.extract import build_model, registry
    from affectpipe.extract.backbones import get_backbone
    from affectpipe.extract.engine import resolve_device
    from affectpipe.extract.plan import RANDOM_INIT_SHA256, resolve_backbone_weights
    from affectpipe.finetune import variants
    from affectpipe.finetune.network import OutputLayout
    from affectpipe.finetune.training import FinetuneResult, select_tasks, split_data, train_variant
    from affectpipe.manifest import image_paths, read_manifest, read_manifest_metadata

    base = backbone or recipe.backbone
    if variants.SEPARATOR in base:
        raise InputError(f"{base} is a fine-tuned variant: fine-tune its base backbone instead")
    if registry.get(base).kind != "model":
        raise InputError(f"{base} is a {registry.get(base).kind}, not a network to fine-tune")
    if max_steps is not None and max_steps < 1:
        raise InputError("--max-steps must be >= 1")
    run = name or recipe.name
    names = [variants.variant_name(base, run)]
    if recipe.bags > 1:
        names = [variants.variant_name(base, f"{run}-bag{b + 1}") for b in range(recipe.bags)]
    torch_device = resolve_device(device)
    if workers is None:
        workers = 0 if torch_device.type == "cpu" else default_workers(device)
    spec = get_backbone(base)

    manifest = read_manifest(paths.manifest)
    files = image_paths(manifest, read_manifest_metadata(paths.manifest))
    chosen, skipped = select_tasks(manifest, recipe, tasks)
    for task, why in skipped.items():
        logger.warning("skipped task %s: %s", task, why)
    train = split_data(manifest, files, "train", chosen)
    val = split_data(manifest, files, "val", chosen)
    if len(train.rows) < recipe.batch_size // 2:
        raise InputError(
            f"{len(train.rows)} labelled train rows with images: too few for batches of "
            f"{recipe.batch_size} (lower --batch-size)"
        )
    if not len(val.rows):
        logger.warning("no labelled validation rows: no early stopping, the last epoch is kept")

    if random_init:
        weights_file, base_sha = None, RANDOM_INIT_SHA256
        logger.warning("--random-init: fine-tuning starts from RANDOM weights, not official ones")
    else:
        resolved = resolve_backbone_weights(base, weights)
        weights_file, base_sha = resolved.path, resolved.sha256
    layout = OutputLayout(chosen)
    results = []
    for bag, variant in enumerate(names):
        results.append(
            train_variant(
                paths,
                name=variant,
                base=base,
                spec=spec,
                module=build_model(spec, weights_file),
                base_sha256=base_sha,
                layout=layout,
                recipe=recipe,
                train=train,
                val=val,
                device=torch_device,
                seed=seed,
                bag=bag,
                workers=workers,
                max_steps=max_steps,
                checkpoint_every=checkpoint_every,
                fresh=fresh,
                force=force,
                progress=progress,
            )  # fmt: skip
        )
    return FinetuneResult(tuple(results), chosen, skipped)
