"""The options of `pipeline heads`: the defaults of the command, of `heads.train` and of
`pipeline run` (see `affectpipe.options`). The models' hyper-parameters, the seed and the
candidates are the config file's [heads] table (`heads.candidates.HeadsConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from affectpipe.options import option


@dataclass(frozen=True)
class HeadsOptions:
    """How `heads` trains its candidates and what it does with the run's earlier ones."""

    folds: int = option(
        0, "Cross-fit K folds by video: out-of-fold predictions for train and val rows."
    )
    seeds: int = option(1, "Seeded copies to average (bagging).")
    strict_labels: bool = option(
        False, "Train only on rows where all three tasks are labelled (for comparison)."
    )
    fresh: bool = option(
        False,
        "Start the run over: remove its heads, predictions and ledger first. Without it, "
        "the candidates trained now are added to the run (or replace those of the same name) "
        "and the others stay.",
    )
