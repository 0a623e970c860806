"""`pipeline finetune`: thin click wrapper around `affectpipe.finetune.finetune`."""

from __future__ import annotations

import click

from affectpipe.cli_options import (
    dataset_option,
    device_of,
    parse_weights_option,
    progress_option,
    random_init_option,
    tasks_option,
    weights_option,
)
from affectpipe.config import DatasetPaths, Settings
from affectpipe.finetune.recipes import RECIPES


def _recipe_list() -> str:
    return "\n".join(f"  {name:<13} {r.description}" for name, r in RECIPES.items())


@click.command(
    help=f"""Fine-tune a registered backbone (and its task outputs) on a dataset's train split;
the result is a new backbone variant BACKBONE@NAME in the weights cache.

\b
Recipes (--recipe NAME, or a .toml file; docs/finetune.md):
{_recipe_list()}

\b
Training: the heads' task losses (CCC for VA, class-weighted cross-entropy or focal
for EXPR, positive-weighted BCE for AUs; missing labels masked), AdamW with warm-up
and cosine decay, augmentation for aligned crops (flip, small rotation/zoom/shift,
brightness/contrast, erasing), mixed precision on CUDA, early stopping on the
validation split's task metrics. A checkpoint is written at every epoch end (and every
--checkpoint-every steps): a killed run resumes when started again with the same
options. Then use the variant like any backbone:

\b
  pipeline extract --dataset D --backbones BACKBONE@NAME
  pipeline heads   --dataset D
"""
)
@dataset_option()
@click.option("--backbone", default=None, help="Backbone to fine-tune [default: the recipe's].")
@click.option(
    "--recipe", "recipe_name", default="ddamfn-mtl", show_default=True,
    help="A built-in recipe (listed above) or a .toml recipe file.",
)  # fmt: skip
@click.option(
    "--name", default=None,
    help="Variant run name: the result is BACKBONE@NAME [default: the recipe's name].",
)  # fmt: skip
@tasks_option("Train only this task (repeatable) [default: the recipe's tasks].")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Override the recipe.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=2),
    default=None,
    help="Images per step (override the recipe).",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Backbone peak learning rate (override the recipe).",
)
@click.option(
    "--amp",
    type=click.Choice(["auto", "off", "bf16", "fp16"]),
    default=None,
    help="Mixed precision (override the recipe; auto: bf16 on CUDA, off on CPU).",
)
@click.option(
    "--max-steps",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many optimiser steps (a short, timed run).",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Also checkpoint every N steps (0: at epoch ends only).",
)
@click.option("--gpu", type=int, default=None, help="Train on CUDA GPU N (= --device cuda:N).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N  [default: cpu]")
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Decode worker processes [default: 0 on CPU, all cores on GPU].",
)
@weights_option("Use a local weights file for the base backbone, e.g. ddamfn=~/ddamfn.pth.")
@random_init_option
@click.option("--seed", default=0, show_default=True, help="Seeds data order, augmentation, init.")
@click.option("--fresh", is_flag=True, help="Discard an interrupted run's checkpoint.")
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing variant of the same name trained from other inputs.",
)
@progress_option
@click.pass_obj
def finetune(
    settings: Settings,
    dataset: str,
    backbone: str | None,
    recipe_name: str,
    name: str | None,
    tasks: tuple[str, ...],
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    amp: str | None,
    max_steps: int | None,
    checkpoint_every: int,
    gpu: int | None,
    device: str | None,
    workers: int | None,
    weights_items: tuple[str, ...],
    random_init: bool,
    seed: int,
    fresh: bool,
    force: bool,
    progress: bool,
) -> None:
    from affectpipe.finetune.api import finetune as run_finetune
    from affectpipe.finetune.recipes import get_recipe
    from affectpipe.machine import default_workers

    recipe = get_recipe(recipe_name).with_options(
        epochs=epochs, batch_size=batch_size, lr=lr, amp=amp
    )
    where = device_of(gpu, device)
    paths = DatasetPaths.of(settings.cache_dir, dataset)
    result = run_finetune(
        paths, recipe, backbone=backbone, name=name, tasks=tasks, device=where,
        weights=parse_weights_option(weights_items), random_init=random_init,
        workers=workers if workers is not None else 0 if where == "cpu" else default_workers(where),
        seed=seed, max_steps=max_steps, checkpoint_every=checkpoint_every, fresh=fresh,
        force=force, progress=progress,
    )  # fmt: skip
    for task, why in result.skipped_tasks.items():
        click.echo(f"skipped task {task}: {why}")
    for variant in result.variants:
        scores = ", ".join(
            f"{k} {v:.4f}"
            for k, v in variant.val_scores.items()
            if k.startswith("p_") or k == "score"
        )
        rate = f", {variant.images_per_s:.1f} img/s" if variant.images_per_s else ""
        click.echo(
            f"{variant.name}: {variant.action} ({variant.steps} steps{rate}; best epoch "
            f"{variant.best_epoch}{'; val ' + scores if scores else ''})\n"
            f"  weights {variant.weights_path}"
        )
    names = ",".join(v.name for v in result.variants)
    click.echo(f"next: pipeline extract --dataset {dataset} --backbones {names}")
