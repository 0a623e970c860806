"""The options of `pipeline finetune`: the defaults of the command and of
`finetune.finetune` (see `affectpipe.options`). What is trained how (epochs, batch, learning
rates, precision, augmentation) is the recipe's (`finetune.recipes`); the fields
`epochs` .. `amp` here only override it (None: the recipe's)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from affectpipe.options import option


@dataclass(frozen=True)
class FinetuneOptions:
    """Which recipe, what it overrides, and how the run is driven."""

    recipe: str = option(
        "ddamfn-mtl",
        "A built-in recipe (listed above) or a .toml recipe file.",
        flag="--recipe",
    )
    epochs: int | None = option(None, "Override the recipe.", type=click.IntRange(min=1))
    batch_size: int | None = option(
        None, "Images per step (override the recipe).", type=click.IntRange(min=2)
    )
    lr: float | None = option(
        None,
        "Backbone peak learning rate (override the recipe).",
        type=click.FloatRange(min=0, min_open=True),
    )
    amp: str | None = option(
        None,
        "Mixed precision (override the recipe; auto: bf16 on CUDA, off on CPU).",
        type=click.Choice(["auto", "off", "bf16", "fp16"]),
    )
    max_steps: int | None = option(
        None,
        "Stop after this many optimiser steps (a short, timed run).",
        type=click.IntRange(min=1),
    )
    checkpoint_every: int = option(
        0, "Also checkpoint every N steps (0: at epoch ends only).", type=click.IntRange(min=0)
    )
    # None: 0 on the CPU (the training step takes every core), all cores on a GPU.
    workers: int | None = option(
        None,
        "Decode worker processes [default: 0 on CPU, all cores on GPU].",
        type=click.IntRange(min=0),
    )
    seed: int = option(0, "Seeds data order, augmentation, init.")
    fresh: bool = option(False, "Discard an interrupted run's checkpoint.")
    force: bool = option(
        False, "Replace an existing variant of the same name trained from other inputs."
    )
