"""affectpipe: frozen face backbones -> cached features -> shallow heads -> tuned blends.

The public API, loaded lazily so that ``import affectpipe`` (and the CLI's help) stays light
(names differ from the subpackages `extract` and `blend`, which importing sets as attributes):

* `Predictor` - a trained run applied to new images, folders and videos (`predict.api`);
* `index_dataset` - build a dataset's manifest (`data.index.index_dataset`);
* `extract_features` - frozen backbones -> cached feature files (`extract.run`);
* `finetune_backbone` - fine-tune a backbone into a variant ``BASE@NAME`` (`finetune.api.finetune`);
* `train_heads` - train the heads of a run (`heads.training.train`);
* `tune_blend` - tune the blend, write submissions and blend.json (`blend.runner.run`);
* `load_features` - a feature set of a dataset as arrays beside its manifest
  (`featuresets.feature_arrays`);
* `DatasetPaths` - where a dataset's files live in a cache.

See docs/api.md for a notebook-style walk through.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> (module, attribute)
_EXPORTS = {
    "Predictor": ("affectpipe.predict.api", "Predictor"),
    "index_dataset": ("affectpipe.data.index", "index_dataset"),
    "extract_features": ("affectpipe.extract", "run"),
    "finetune_backbone": ("affectpipe.finetune.api", "finetune"),
    "train_heads": ("affectpipe.heads.training", "train"),
    "tune_blend": ("affectpipe.blend.runner", "run"),
    "load_features": ("affectpipe.featuresets", "feature_arrays"),
    "DatasetPaths": ("affectpipe.config", "DatasetPaths"),
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'affectpipe' has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
