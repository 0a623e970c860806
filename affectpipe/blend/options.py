"""The options of `pipeline blend`: the defaults of the command, of `blend.run` and of
`pipeline run`'s [blend] table (see `affectpipe.options`). Each registered stage after the
base gets its own `--no-<stage>` flag when the command runs (`blend.cli.StageFlagsCommand`);
the stages switched off are `disabled_stages`."""

from __future__ import annotations

from dataclasses import dataclass

import click

from affectpipe.config import BLEND_PREFER, BLEND_SEARCH_ROWS
from affectpipe.options import option

# Smoothing kernels, in search order (`blend.smoothing` implements them; here so that the
# options import neither numpy nor scipy).
KERNELS: tuple[str, ...] = ("box", "gaussian")


@dataclass(frozen=True)
class BlendOptions:
    """Which stages run, and how the honest estimate is made."""

    correction: bool = option(
        True,
        "VA calibration / EXPR class offsets / AU thresholds after the mix.",
        flag="--correction/--no-correction",
    )
    smoothing: bool = option(
        True, "Temporal smoothing along each video.", flag="--smoothing/--no-smoothing"
    )
    kernels: tuple[str, ...] = KERNELS
    max_steps: int = 20  # greedy weight-search steps (1: the best single candidate)
    crossfit_folds: int = option(3, "Cross-fit folds.", flag="--folds", type=click.IntRange(2))
    seed: int = 0
    # The searches score at most this many labelled rows (`tuning.search_rows`); 0 or None:
    # all of them.
    search_rows: int | None = option(
        BLEND_SEARCH_ROWS,
        "Above this many labelled validation rows, the searches score every k-th of them "
        "in video order (the scores reported are of all); 0: always all.",
        type=click.IntRange(0),
    )
    n_jobs: int = option(
        0,
        "Processes for tuning and cross-fit folds; 0: one per usable core for a task with "
        "over 20,000 validation rows, else 1.",
        flag="--jobs",
        type=click.IntRange(0),
    )
    prefer: str = option(
        "best",
        "best: the blend only when it cross-fits above the best single candidate (a tie "
        "keeps the single candidate); blend: the blend always.",
        type=click.Choice(BLEND_PREFER),
    )
    # Registered stages after the base that are switched off (`--no-<stage>`).
    disabled_stages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # A name that is no registered stage is an InputError naming the registered ones
        # (e.g. from `pipeline run`'s [blend] table), before any stage runs.
        if self.disabled_stages:
            from affectpipe.blend.stage_registry import get_blend_stage

            for name in self.disabled_stages:
                get_blend_stage(name)

    def runs(self, stage) -> bool:
        """Whether the stage after the base `stage` (a `BlendStage`) runs."""
        return stage.name not in self.disabled_stages
