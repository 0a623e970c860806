"""The blend-stage protocol and its registry: the stages a blend may add after its base.

Every blend has a fixed base: the weighted mix of candidates, the task's correction (VA
calibration, EXPR offsets, AU thresholds) and smoothing along each video. The correction is
re-tuned for every smoothing window, so the two are tuned and judged as a pair
(`blend.tuning`). After the base come the stages registered here, in registration order
(stages that act on continuous outputs before those that act on decisions). Each is tuned
inside every blend fit and stays only when the cross-fitted score with it beats the same
pipeline without it, one rule for all (`tuning.decide_stages`). Tuning, the cross-fit,
`blend.json`, the report, the CLI's `--no-<stage>` flags, predict and a shared run's schema
all loop over `blend_stages(rules)`.

Adding a stage = a `BlendStage` subclass + one `register_blend_stage` call; a plugin module
outside the package does the same (`affectpipe.plugins`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from affectpipe.errors import InputError

VALUES, DECISIONS = "values", "decisions"
# A score beats another only by more than this (float noise is no gain): every search and
# every cross-fit decision of the blend uses it.
TOL = 1e-5


@dataclass(frozen=True)
class BlendInputs:
    """What a stage may read while a blend is tuned: the dataset, the manifest rows the blend
    covers (validation, then test), and the task's training label prior."""

    paths: Any  # DatasetPaths
    manifest: Any  # pandas DataFrame
    rows: np.ndarray
    prior: np.ndarray


@dataclass(frozen=True)
class PredictInputs:
    """What a stage may read when predict applies a blend: the features computed for the
    new faces (`extract.ComputedFeatures`), the run's backbone records and the rows with
    ok features."""

    features: Any
    records: dict[str, Any]
    rows: np.ndarray


@dataclass(frozen=True)
class StageFit:
    """One stage's tuning job on the search rows: their labels, the correction in force, the
    stage's inputs on those rows, and the task's scoring (`score(values, post)` of
    continuous outputs, `tuned_post(values)` -> (a correction tuned on them, its score))."""

    rules: Any  # TaskRules
    labels: np.ndarray
    post: dict[str, Any]
    inputs: Any
    score: Callable[[np.ndarray, dict[str, Any]], float]
    tuned_post: Callable[[np.ndarray], tuple[dict[str, Any], float]]

    def decision_score(self, decisions: np.ndarray) -> float:
        return self.rules.score(self.labels, decisions)


class BlendStage:
    """A stage after the blend's base. Subclasses set the class attributes and implement
    `applies_to`, `fit`, `apply`, `to_json`, `from_json`; the rest has defaults.

    `acts_on`: VALUES (continuous outputs before the correction; the stage may re-tune the
    correction on its output) or DECISIONS (the task's decided outputs).
    Params are the stage's tuned state: plain values and numpy arrays, or None when the
    tuned stage does nothing (it is then never in force)."""

    name: str = ""  # blend.json key, stage-table row, `--no-<name>` flag
    label: str = ""  # the report's row label
    help: str = ""  # the `--no-<name>` flag's help
    acts_on: str = VALUES
    json_schema: dict[str, Any] = {}  # of `to_json`'s output, for a shared run (predict)

    def applies_to(self, rules: Any) -> bool:
        raise NotImplementedError

    def inputs(self, blend: BlendInputs) -> Any:
        """The stage's inputs on `blend.rows` (None: the stage cannot run on this data)."""
        return ()

    def take(self, inputs: Any, rows: np.ndarray) -> Any:
        """Inputs on a subset of the rows (row-aligned inputs override this)."""
        return inputs

    def predict_inputs(self, params: Any, predict: PredictInputs) -> Any:
        """The inputs `apply` needs when predict applies these params to new faces."""
        return ()

    def fit(self, x: np.ndarray, job: StageFit) -> tuple[Any, dict[str, Any]]:
        """(params or None, the correction in force after the stage) tuned on `x`: the
        continuous outputs or the decisions of the search rows (`acts_on`)."""
        raise NotImplementedError

    def apply(self, params: Any, x: np.ndarray, inputs: Any) -> np.ndarray:
        raise NotImplementedError

    def to_json(self, in_force: Any, tuned: Any) -> Any:
        """blend.json's entry: the params in force (None: not in force) and as tuned."""
        raise NotImplementedError

    def from_json(self, entry: Any) -> Any:
        """The params in force recorded by `to_json` (None: not in force); ValueError when
        the entry cannot be applied."""
        raise NotImplementedError

    def describe(self, params: Any) -> str:
        """The tuned parameters in a few words, for the report."""
        return ""

    def backbones(self, params: Any) -> list[str]:
        """Backbones whose features `predict_inputs` reads (predict computes them too)."""
        return []


_STAGES: dict[str, BlendStage] = {}
# Names a stage cannot take: the base stages' and the other keys of a task's blend.json entry.
RESERVED = {
    "blend",
    "weights",
    "smoothing",
    "calibration",
    "offsets",
    "thresholds",
    "kept",
    "candidates",
    "candidate_scores",
    "choice",
    "choice_note",
    "alternatives",
    "stage_decisions",
    "stage_scores",
    "crossfit_stage_scores",
    "crossfit_score",
    "crossfit_folds",
    "validation",
    "validation_crossfit",
    "support",
    "data",
    "filled_rows",
    "test_fill",
    "test_rows",
}


def register_blend_stage(stage: BlendStage) -> BlendStage:
    """Register `stage` after those registered before it (the built-in ones first)."""
    _load_builtin()
    name = stage.name
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"blend stage name {name!r}: use lower-case letters, digits and _")
    if name in RESERVED:
        raise ValueError(f"blend stage name {name!r} is taken by the blend itself")
    if stage.acts_on not in (VALUES, DECISIONS):
        raise ValueError(f"blend stage {name!r}: acts_on must be {VALUES!r} or {DECISIONS!r}")
    if name in _STAGES and type(_STAGES[name]) is not type(stage):
        raise ValueError(f"blend stage {name!r} is already registered")
    _STAGES[name] = stage
    return stage


def blend_stages(rules: Any = None) -> list[BlendStage]:
    """The registered stages in the order they apply (those for `rules` when given)."""
    _load_builtin()
    ordered = sorted(_STAGES.values(), key=lambda s: s.acts_on == DECISIONS)
    return [s for s in ordered if rules is None or s.applies_to(rules)]


def get_blend_stage(name: str) -> BlendStage:
    _load_builtin()
    if name not in _STAGES:
        raise InputError(
            f"blend stage {name!r} is not registered (registered: {', '.join(_STAGES)}); "
            "a run that used a plugin's stage needs that plugin (AFFECTPIPE_PLUGINS)"
        )
    return _STAGES[name]


def flag_name(stage: BlendStage) -> str:
    """The parameter name of the option that switches a stage off (`--no-<name with
    dashes>`, made by `blend.cli.StageFlagsCommand`)."""
    return "no_" + stage.name


def _load_builtin() -> None:
    # The built-in stages register when their module is imported (it imports this one; while
    # it is being imported, this import returns the partly made module).
    import affectpipe.blend.stages  # noqa: F401
