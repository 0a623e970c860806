"""Extraction stage: frozen backbones over a dataset's distinct images -> ``features/*.h5``.

This package is the stage's public API only: each name below is imported from the module
that defines it on first access, so importing the package (for the CLI, or the torch-free
backbone registry `affectpipe.extract.registry`) loads none of the stage's modules.

The stage's modules, by job: `stage` (`run` and its passes, `build_model`, `model_job`),
`plan` (which backbones, weights and rows), `staleness` (which files are current),
`engine` (the shared decode/inference pass), `store` (resumable part stores), `assemble`
(final files), `importers` (other tools' outputs), `shards` (`merge`), `results`; every
backbone, of any kind, is registered in `registry`. Its users (predict, finetune, the
benchmarks) import from here, never from those modules.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module defining it (imported on first use: most of them import torch).
_LAZY = {
    # Running the stage (`pipeline extract`, `affectpipe.extract_features`).
    "run": "affectpipe.extract.stage",
    "ExtractOptions": "affectpipe.extract.options",
    "InferenceOptions": "affectpipe.extract.options",
    "merge": "affectpipe.extract.shards",
    "DEFAULT_CHUNK_ROWS": "affectpipe.extract.stage",
    "PRECISIONS": "affectpipe.extract.stage",
    "RANDOM_INIT_SEED": "affectpipe.extract.stage",
    "BackboneReport": "affectpipe.extract.results",
    "ExtractSummary": "affectpipe.extract.results",
    # What it computes from and where: the manifest's view, the plan's names and files.
    "ManifestView": "affectpipe.extract.plan",
    "read_manifest_view": "affectpipe.extract.plan",
    "default_backbones": "affectpipe.extract.plan",
    "output_path": "affectpipe.extract.plan",
    "shard_range": "affectpipe.extract.plan",
    "RANDOM_INIT_SHA256": "affectpipe.extract.plan",
    "IDENTITY_KEYS": "affectpipe.extract.staleness",
    # A backbone's frozen network as extraction builds it (finetune, the benchmarks).
    "build_model": "affectpipe.extract.stage",
    # Features of new images, decoded as extraction decodes them (predict).
    "FeatureComputer": "affectpipe.extract.compute",
    "ComputedFeatures": "affectpipe.extract.compute",
    "is_descriptor": "affectpipe.extract.compute",
    "descriptor_arrays": "affectpipe.extract.compute",
    "load_rgb": "affectpipe.extract.decode",
    "collate": "affectpipe.extract.decode",
    "die_with_parent": "affectpipe.extract.decode",
    "to_rgb": "affectpipe.extract.decode",
    "MAX_DECODE_PIXELS": "affectpipe.extract.decode",
    "get_weights_entry": "affectpipe.extract.weights",
    # dlib's face detectors, built once per process (predict's face check).
    "frontal_detector": "affectpipe.extract.backbones.landmarks",
    "cnn_detector": "affectpipe.extract.backbones.landmarks",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
