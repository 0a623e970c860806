"""Fitted estimators as JSON + arrays, so that loading a head never unpickles anything.

An estimator becomes ``{"estimator": CLASS, "params": ..., "fitted": ...}``: its
`get_params()` and its fitted attributes (names ending in ``_``), encoded recursively.
JSON scalars stay as they are; every other value is a one-key object: ``{"tensor": NAME}``
(a numeric array, stored in the safetensors file under NAME), ``{"strings": [...]}``,
``{"list": [...]}`` or ``{"map": {...}}``. LightGBM boosters are already their library's
text model format (`model_to_string`) and stay strings.

Decoding builds only the classes of `estimator_classes` (the registered head models, the
seed bag and the feature scaler) from their params, then sets the fitted attributes; any
other class name, attribute name or node shape is refused. Nothing in the files can name
code to run.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from affectpipe.errors import InputError

_FITTED_NAME = re.compile(r"[a-z][a-z0-9_]*_")
_ARRAY_KINDS = "biuf"  # bool, signed, unsigned, float: what safetensors stores


def estimator_classes() -> dict[str, type]:
    """Classes a head file may name: the head models, `SeedBag` and `FeatureScaler`."""
    from affectpipe.heads.model_registry import MODELS
    from affectpipe.heads.models import SeedBag
    from affectpipe.heads.preprocess import FeatureScaler

    return {cls.__name__: cls for cls in (FeatureScaler, SeedBag, *MODELS.values())}


class Encoder:
    """Turns estimators into JSON-able nodes, collecting their arrays in `tensors`."""

    def __init__(self) -> None:
        self.tensors: dict[str, np.ndarray] = {}
        self._classes = estimator_classes()

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, bool | int | float | str):
            return value
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            if value.dtype.kind in "US":
                return {"strings": value.tolist()}
            if value.dtype.kind not in _ARRAY_KINDS:
                raise TypeError(f"cannot store a {value.dtype} array in a head file")
            name = f"t{len(self.tensors)}"
            self.tensors[name] = np.ascontiguousarray(value)
            return {"tensor": name}
        if isinstance(value, list | tuple):
            return {"list": [self.encode(item) for item in value]}
        if isinstance(value, dict) and all(isinstance(key, str) for key in value):
            return {"map": {key: self.encode(item) for key, item in value.items()}}
        name = type(value).__name__
        if self._classes.get(name) is type(value):
            fitted = {k: v for k, v in vars(value).items() if _FITTED_NAME.fullmatch(k)}
            return {
                "estimator": name,
                "params": self.encode(value.get_params(deep=False)),
                "fitted": self.encode(fitted),
            }
        raise TypeError(f"cannot store a {name} in a head file")


class Decoder:
    """The inverse of `Encoder`; refuses (InputError naming `source`) anything it did not
    write."""

    def __init__(self, tensors: dict[str, np.ndarray], source: str) -> None:
        self.tensors = tensors
        self.source = source
        self._classes = estimator_classes()

    def _bad(self, why: str) -> InputError:
        return InputError(f"{self.source}: not a valid affectpipe head ({why})")

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if not isinstance(node, dict):
            raise self._bad(f"unexpected {type(node).__name__} node")
        if "estimator" in node:
            return self._estimator(node)
        if len(node) != 1:
            raise self._bad(f"unexpected node with keys {sorted(node)}")
        ((tag, body),) = node.items()
        if tag == "tensor" and isinstance(body, str) and body in self.tensors:
            return self.tensors[body]
        if tag == "strings" and isinstance(body, list):
            return np.asarray(body, dtype=str)
        if tag == "list" and isinstance(body, list):
            return [self.decode(item) for item in body]
        if tag == "map" and isinstance(body, dict):
            return {str(key): self.decode(item) for key, item in body.items()}
        raise self._bad(f"unexpected {tag!r} node")

    def _estimator(self, node: dict[str, Any]) -> Any:
        name = node.get("estimator")
        if set(node) != {"estimator", "params", "fitted"} or name not in self._classes:
            raise self._bad(f"unknown estimator {name!r}")
        params, fitted = self.decode(node["params"]), self.decode(node["fitted"])
        if not isinstance(params, dict) or not isinstance(fitted, dict):
            raise self._bad(f"{name} without params or fitted attributes")
        try:
            estimator = self._classes[name](**params)
        except (TypeError, ValueError) as exc:
            raise self._bad(f"bad parameters for {name}: {exc}") from exc
        for key, value in fitted.items():
            if not _FITTED_NAME.fullmatch(key):
                raise self._bad(f"{name} has an attribute {key!r}")
            setattr(estimator, key, value)
        return estimator
