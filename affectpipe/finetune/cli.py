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
from affectpipe.finetune.options import FinetuneOptions
from affectpipe.finetune.recipes import RECIPES
from affectpipe.options import build, click_options


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
    "--name", default=None,
    help="Variant run name: the result is BACKBONE@NAME [default: the recipe's name].",
)  # fmt: skip
@tasks_option("Train only this task (repeatable) [default: the recipe's tasks].")
@click_options(FinetuneOptions)
@click.option("--gpu", type=int, default=None, help="Train on CUDA GPU N (= --device cuda:N).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N  [default: cpu]")
@weights_option("Use a local weights file for the base backbone, e.g. ddamfn=~/ddamfn.pth.")
@random_init_option
@progress_option
@click.pass_obj
def finetune(
    settings: Settings,
    dataset: str,
    backbone: str | None,
    name: str | None,
    tasks: tuple[str, ...],
    gpu: int | None,
    device: str | None,
    weights_items: tuple[str, ...],
    random_init: bool,
    progress: bool,
    **options: object,
) -> None:
    from affectpipe.finetune.api import finetune as run_finetune
    from affectpipe.finetune.recipes import get_recipe

    chosen = build(FinetuneOptions, options)
    recipe = get_recipe(chosen.recipe).with_options(
        epochs=chosen.epochs, batch_size=chosen.batch_size, lr=chosen.lr, amp=chosen.amp
    )
    paths = DatasetPaths.of(settings.cache_dir, dataset)
    result = run_finetune(
        paths, recipe, backbone=backbone, name=name, tasks=tasks,
        device=device_of(gpu, device), weights=parse_weights_option(weights_items),
        random_init=random_init, workers=chosen.workers, seed=chosen.seed,
        max_steps=chosen.max_steps, checkpoint_every=chosen.checkpoint_every,
        fresh=chosen.fresh, force=chosen.force, progress=progress,
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
