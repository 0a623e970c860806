"""A head file's schema, and its decoded head checked before it predicts anything.

A head can come from a shared run, so decoding it (`storage.Decoder`: only registered
classes) is not enough: its numbers must make a model of its task. `check_head` requires
the output columns and every model's task to be the head's; float arrays of the shapes the
model uses, all finite (no NaN scaler mean, no int8 or boolean coefficients); MLP and
temporal weights that fit their network exactly; LightGBM boosters that pass
`lgbtext.checked_model` for the scaler's output width, which it replaces them with.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from affectpipe.heads.lgbtext import ModelTextError, checked_model
from affectpipe.heads.preprocess import FeatureScaler
from affectpipe.schema import PRED_COLUMNS, TASKS
from affectpipe.untrusted import SHA256

# The head JSON's top level; `scaler` and `model` are `storage` nodes, checked as decoded.
HEAD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "format",
        "task",
        "candidate",
        "feature_set",
        "output_columns",
        "scaler",
        "model",
        "arrays",
    ],
    "additionalProperties": False,
    "properties": {
        "format": {"type": "string"},
        "task": {"enum": list(TASKS)},
        "candidate": {"type": "string", "maxLength": 200},
        "feature_set": {"type": "string", "maxLength": 1000},
        "output_columns": {"type": "array", "items": {"type": "string"}, "maxItems": 100},
        "provenance": {"type": "object"},
        "scaler": {"type": "object"},
        "model": {"type": "object"},
        "arrays": {
            "type": "object",
            "required": ["file", "sha256"],
            "properties": {"file": {"type": "string"}, "sha256": SHA256},
        },
    },
}
MAX_WIDTH = 1_000_000  # input columns of a head: ~1,300 for the widest backbone
MAX_BAG = 1000  # seeded copies in a seed bag


class HeadCheckError(ValueError):
    """A decoded head that cannot be used as it is (the message says why)."""


def _array(value: Any, name: str, shape: tuple[int, ...], positive: bool = False) -> None:
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise HeadCheckError(f"{name} is {kind}, not a float array")
    if value.shape != shape:
        raise HeadCheckError(f"{name} has shape {value.shape}, expected {shape}")
    if not np.isfinite(value).all():
        raise HeadCheckError(f"{name} is not finite")
    if positive and not (value > 0).all():
        raise HeadCheckError(f"{name} is not positive")


def _count(value: Any, name: str, low: int = 1, high: int = MAX_WIDTH) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise HeadCheckError(f"{name} is {value!r}, expected an integer in {low}..{high}")
    return value


def _check_scaler(scaler: Any) -> int:
    """The scaler's output width."""
    if not isinstance(scaler, FeatureScaler):
        raise HeadCheckError("no feature scaler")
    width = _count(getattr(scaler, "n_features_in_", None), "scaler.n_features_in_")
    _array(getattr(scaler, "mean_", None), "scaler.mean_", (width,))
    _array(getattr(scaler, "scale_", None), "scaler.scale_", (width,), positive=True)
    projection = getattr(scaler, "projection_", None)
    if projection is None:
        return width
    if not isinstance(projection, np.ndarray) or projection.ndim != 2:
        raise HeadCheckError("scaler.projection_ is not a matrix")
    _array(projection, "scaler.projection_", (width, _count(projection.shape[1], "PCs")))
    _array(getattr(scaler, "offset_", None), "scaler.offset_", (projection.shape[1],))
    return projection.shape[1]


def _check_state(weights: Any, name: str, build) -> None:
    """Network weights (name -> float array) that load into `build()` exactly."""
    import torch

    if not isinstance(weights, dict):
        raise HeadCheckError(f"{name} is not a map of arrays")
    for key, value in weights.items():
        if isinstance(value, np.ndarray):
            _array(value, f"{name}[{key!r}]", value.shape)
    try:
        build().load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    except (TypeError, ValueError, RuntimeError, KeyError) as exc:
        raise HeadCheckError(f"{name} does not fit its network: {exc}") from None


def _check_model(model: Any, task: str, width: int) -> None:
    from affectpipe.heads.models import LightGBMHead, LinearHead, MLPHead, SeedBag
    from affectpipe.heads.temporal import ARCHS, TemporalHead, _Net
    from affectpipe.tasks import get_task

    name = type(model).__name__
    if isinstance(model, SeedBag):
        copies = getattr(model, "estimators_", None)
        if not isinstance(copies, list) or not 1 <= len(copies) <= MAX_BAG:
            raise HeadCheckError(f"a seed bag of {type(copies).__name__} (1..{MAX_BAG} models)")
        for copy in copies:
            if type(copy) is not type(model.estimator):
                raise HeadCheckError("a seed bag mixing model kinds")
            _check_model(copy, task, width)
        return
    if getattr(model, "task", None) != task:
        raise HeadCheckError(f"its {name} is for task {getattr(model, 'task', None)!r}")
    n_out = get_task(task).n_outputs
    if isinstance(model, LinearHead):
        _array(getattr(model, "coef_", None), "coef_", (width, n_out))
        _array(getattr(model, "intercept_", None), "intercept_", (n_out,))
    elif isinstance(model, MLPHead):
        if _count(getattr(model, "n_features_in_", None), "n_features_in_") != width:
            raise HeadCheckError(f"its MLP takes {model.n_features_in_} inputs, not {width}")
        _count(model.hidden, "hidden", 0)
        _check_state(getattr(model, "weights_", None), "weights_", lambda: model._module(width))
    elif isinstance(model, LightGBMHead):
        boosters = getattr(model, "boosters_", None)
        wanted = get_task(task).n_boosters
        if not isinstance(boosters, list) or len(boosters) != wanted:
            raise HeadCheckError(f"a {task} LightGBM head has {wanted} boosters")
        try:
            model.boosters_ = [checked_model(text, width, task) for text in boosters]
        except ModelTextError as exc:
            raise HeadCheckError(f"LightGBM booster: {exc}") from None
    elif isinstance(model, TemporalHead):
        if getattr(model, "arch_", None) not in ARCHS:
            raise HeadCheckError(f"temporal arch_ {getattr(model, 'arch_', None)!r}")
        n_in = _count(getattr(model, "n_features_in_", None), "n_features_in_")
        _count(model.width, "width")
        dilations = tuple(_count(d, "dilation") for d in model.dilations)
        _check_state(
            getattr(model, "weights_", None),
            "weights_",
            lambda: _Net(n_in, model.width, n_out, model.arch_, dilations),
        )
        base = getattr(model, "base_", None)
        if base is not None:
            if not isinstance(base, LinearHead):
                raise HeadCheckError(f"a temporal head's frame head is a {type(base).__name__}")
            _check_model(base, task, width)
    elif callable(getattr(model, "check_fitted", None)):
        # A registered model from elsewhere checks its own fitted state (ValueError if bad).
        try:
            model.check_fitted(task, width)
        except ValueError as exc:
            raise HeadCheckError(f"its {name}: {exc}") from None
    else:
        raise HeadCheckError(f"unknown model {name} (no check_fitted(task, width) to check it)")


def check_head(head: Any) -> None:
    """Raise HeadCheckError unless `head` (a decoded `FittedHead`) can predict its task."""
    task = head.task
    if task not in PRED_COLUMNS or tuple(head.output_columns) != PRED_COLUMNS[task]:
        raise HeadCheckError(f"output columns {list(head.output_columns)} are not a {task} head's")
    _check_model(head.model, task, _check_scaler(head.scaler))
