"""The head-model registry: a model name -> its estimator class.

A head model is a scikit-learn-style estimator whose `__init__` takes `task` (and its params),
with `fit(X, y, eval_set=None)` and `predict_outputs(X)`; its fitted state is numpy arrays,
plain values and lists (what `heads.storage` writes). A model registered from outside the
package also defines `check_fitted(task, width)`, raising ValueError when a loaded head's
state cannot predict `task` from `width` inputs (runs from elsewhere are untrusted:
`heads.checks`). Adding one = its module + one
`register_head_model` call; a plugin module outside the package does the same
(`affectpipe.plugins`).
"""

from __future__ import annotations

from sklearn.base import BaseEstimator

from affectpipe.errors import InputError
from affectpipe.heads.models import AttentionHead, LightGBMHead, LinearHead, MLPHead, SeedBag
from affectpipe.heads.temporal import TemporalHead

MODELS: dict[str, type[BaseEstimator]] = {}


def register_head_model(name: str, cls: type[BaseEstimator]) -> type[BaseEstimator]:
    """Register `cls` under `name` (candidates name it as `backbone:part/NAME`)."""
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"head model name {name!r}: use lower-case letters, digits and _")
    if name in MODELS and MODELS[name] is not cls:
        raise ValueError(f"head model {name!r} is already registered ({MODELS[name].__name__})")
    MODELS[name] = cls
    return cls


register_head_model("linear", LinearHead)
register_head_model("mlp", MLPHead)
register_head_model("lightgbm", LightGBMHead)
register_head_model("attention", AttentionHead)  # a `spatial` part's tokens (--spatial-grid)
register_head_model("temporal", TemporalHead)  # sequences of frames per video (`heads.temporal`)


def make_model(
    name: str, task: str, params: dict | None = None, seeds: int = 1, seed: int = 0
) -> BaseEstimator:
    """A fresh model by name, seeded with `seed` unless `params` sets random_state.

    `seeds` > 1 bags that many seeded copies (ignored for deterministic models).
    """
    if name not in MODELS:
        raise InputError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    cls = MODELS[name]
    try:
        model = cls(task=task, **(params or {}))
    except TypeError as exc:
        raise InputError(f"bad parameters for model {name!r}: {exc}") from None
    seeded = "random_state" in model.get_params()
    if seeded and "random_state" not in (params or {}):
        model.set_params(random_state=seed)
    if seeds > 1 and seeded:
        return SeedBag(model, n_seeds=seeds)
    return model
