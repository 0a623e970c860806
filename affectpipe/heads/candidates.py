"""Candidates (one task x one feature set x one model), the defaults, and the TOML config.

A candidate's name is file-name safe: ``<feature-set slug>__<model>``, e.g.
``mt-emotieffnet.embedding+logits__mlp``. On the command line it can also be written
``mt-emotieffnet:embedding+logits/mlp``.

Config file (``pipeline.toml``; every key optional, see ``docs/pipeline.example.toml``)::

    [heads]
    seed = 0              # base seed of every model
    n_components = 128    # wide feature sets are PCA-whitened to this many columns (0 = off)
    workers = 0           # processes fitting candidates in parallel (0 = one per usable core)
    models = ["linear", "mlp"]   # models of the default candidates
    temporal = true       # plus one `temporal` candidate per task (see temporal_candidates)
    fusion = true         # plus the early-fusion feature set of several backbones

    [heads.params.mlp]    # hyper-parameters of a model, for every task
    hidden = 128
    [heads.params.mlp.expr]   # ... or for one task (overrides the line above)
    focal_gamma = 2.0

    [[heads.candidates]]  # explicit candidates replace the defaults
    task = "expr"
    features = "mt-emotieffnet:embedding+logits"
    model = "mlp"
    params = { hidden = 512 }
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affectpipe.errors import InputError
from affectpipe.extract import registry
from affectpipe.featuresets import (
    FeatureSet,
    candidate_name,
    parse_feature_set,
    split_candidate_name,
)
from affectpipe.heads.model_registry import MODELS
from affectpipe.schema import TASKS
from affectpipe.tasks import get_task
from affectpipe.untrusted import check_schema, read_toml

DEFAULT_MODELS: tuple[str, ...] = ("linear", "mlp")
DEFAULT_TEMPORAL = True  # measured on the demo: docs/benchmarks.md, "Temporal heads"
# Early fusion: one more default feature set per task, the backbones' own default sets
# concatenated, while their raw width stays within this many columns (the heads project wide
# sets to `n_components` anyway). Measured on real photos: docs/benchmarks.md, "Early fusion".
DEFAULT_FUSION = True
FUSION_MAX_WIDTH = 4096


@dataclass(frozen=True)
class Candidate:
    task: str
    features: FeatureSet
    model: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def name(self) -> str:
        return candidate_name(self.features, self.model)

    def __str__(self) -> str:
        return f"{self.task}/{self.name}"


def parse_candidate_ref(text: str) -> tuple[FeatureSet, str]:
    """``SPEC/MODEL`` or the file-name form ``SLUG__MODEL`` -> (feature set, model)."""
    if "/" in text:
        spec, _, model = text.rpartition("/")
    elif split_candidate_name(text):
        spec, model = split_candidate_name(text)
    else:
        raise InputError(
            f"candidate {text!r}: expected FEATURES/MODEL, e.g. mt-emotieffnet:logits/mlp"
        )
    if model not in MODELS:
        raise InputError(f"candidate {text!r}: unknown model {model!r} ({', '.join(MODELS)})")
    return parse_feature_set(spec), model


def default_feature_sets(
    backbones: Mapping[str, Collection[str]], fusion: bool = False
) -> dict[str, list[FeatureSet]]:
    """Default feature sets per task for the backbones present (backbone -> its parts, or
    {part: width}): the feature sets each backbone's registration lists per task
    (`affectpipe.extract.registry`, torch-free), those its file has. With `fusion`, one more
    per task where two or more backbones fit in FUSION_MAX_WIDTH raw columns
    (`fusion_feature_set`)."""
    sets: dict[str, list[FeatureSet]] = {task: [] for task in TASKS}
    for backbone, parts in backbones.items():
        rules = registry.default_parts(backbone, parts)
        for task in TASKS:
            found = rules.get(task, [])
            sets[task] += [FeatureSet(tuple((backbone, part) for part in r)) for r in found]
    if fusion:
        for task in TASKS:
            fused = fusion_feature_set(sets[task], backbones)
            if fused is not None:
                sets[task].append(fused)
    return sets


def fusion_feature_set(
    own: list[FeatureSet], backbones: Mapping[str, Collection[str]]
) -> FeatureSet | None:
    """The early-fusion feature set of one task: each backbone's widest default set (most
    parts), concatenated in the order given, skipping a backbone that would take the raw
    width past FUSION_MAX_WIDTH; None unless two or more backbones take part. Widths are
    known when `backbones` maps parts to widths (a feature file's), else counted as 0."""
    parts: list[tuple[str, str]] = []
    width, members = 0, 0
    for backbone, available in backbones.items():
        mine = [fs for fs in own if fs.backbones == (backbone,)]
        if not mine:
            continue
        widest = max(mine, key=lambda fs: len(fs.parts))
        extra = sum(
            int(available[part]) if isinstance(available, Mapping) else 0
            for _, part in widest.parts
        )
        if width + extra > FUSION_MAX_WIDTH:
            continue
        parts += widest.parts
        width, members = width + extra, members + 1
    return FeatureSet(tuple(parts)) if members >= 2 else None


@dataclass
class HeadsConfig:
    seed: int = 0
    n_components: int = 128
    workers: int = 0  # processes fitting candidates in parallel (0 = one per usable core)
    models: tuple[str, ...] = DEFAULT_MODELS
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    candidates: list[Candidate] | None = None
    temporal: bool = DEFAULT_TEMPORAL  # one `temporal` candidate per task among the defaults
    fusion: bool = DEFAULT_FUSION  # the early-fusion feature set among the defaults

    def model_params(self, model: str, task: str) -> dict[str, Any]:
        """Params of `model` for `task`: model-wide keys, then the task's own table."""
        table = dict(self.params.get(model, {}))
        per_task = {t: table.pop(t) for t in TASKS if isinstance(table.get(t), dict)}
        return {**table, **per_task.get(task, {})}


_PARAMS = {"type": "object"}  # model hyper-parameters: each model's constructor checks them
# The [heads] table: types strict (TOML "false" is a string, not a boolean), counts bounded.
HEADS_CONFIG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
        "n_components": {"type": "integer", "minimum": 0, "maximum": 100_000},
        "workers": {"type": "integer", "minimum": 0, "maximum": 1024},
        "models": {"type": "array", "items": {"type": "string"}, "maxItems": 100},
        "temporal": {"type": "boolean"},
        "fusion": {"type": "boolean"},
        "params": {"type": "object", "additionalProperties": _PARAMS},
        "candidates": {
            "type": "array",
            "maxItems": 10_000,
            "items": {
                "type": "object",
                "required": ["task", "features", "model"],
                "additionalProperties": False,
                "properties": {
                    "task": {"enum": list(TASKS)},
                    "features": {"type": "string", "maxLength": 1000},
                    "model": {"type": "string"},
                    "params": _PARAMS,
                },
            },
        },
    },
}


def load_config(path: Path | None) -> HeadsConfig:
    """Read the ``[heads]`` table of a TOML file (defaults when `path` is None)."""
    if path is None:
        return HeadsConfig()
    raw = read_toml(path).get("heads", {})
    unknown = set(raw) - set(HEADS_CONFIG_SCHEMA["properties"]) if isinstance(raw, dict) else ()
    if unknown:
        raise InputError(f"{path}: unknown keys in [heads]: {', '.join(sorted(unknown))}")
    check_schema(raw, HEADS_CONFIG_SCHEMA, f"{path} [heads]")
    models = tuple(raw.get("models", DEFAULT_MODELS))
    for model in [*models, *raw.get("params", {})]:
        if model not in MODELS:
            raise InputError(f"{path}: unknown model {model!r} ({', '.join(MODELS)})")
    candidates = None
    if "candidates" in raw:
        candidates = []
        for i, entry in enumerate(raw["candidates"], start=1):
            if entry["model"] not in MODELS:
                raise InputError(f"{path}: candidate {i}: unknown model {entry['model']!r}")
            candidates.append(
                Candidate(
                    task=entry["task"],
                    features=parse_feature_set(entry["features"]),
                    model=entry["model"],
                    params=dict(entry.get("params", {})),
                )
            )
    return HeadsConfig(
        seed=int(raw.get("seed", 0)),
        n_components=int(raw.get("n_components", 128)),
        workers=int(raw.get("workers", 0)),
        models=models,
        params={k: dict(v) for k, v in raw.get("params", {}).items()},
        candidates=candidates,
        temporal=bool(raw.get("temporal", DEFAULT_TEMPORAL)),
        fusion=bool(raw.get("fusion", DEFAULT_FUSION)),
    )


def temporal_candidates(
    config: HeadsConfig, backbones: Mapping[str, Collection[str]], tasks: list[str]
) -> list[Candidate]:
    """One `temporal` candidate per task: on the early-fusion feature set where there is one
    (the frame heads' best inputs, so the sequence model is not handicapped against them),
    else on the widest default set of the first backbone with logits (a CNN) by feature-file
    name: sequence models cost more than frame heads, so they are not trained on every
    feature set (ask for more with --candidate)."""
    sets = default_feature_sets(backbones)
    cnn = [name for name, parts in backbones.items() if "logits" in parts]
    chosen = []
    for task in tasks:
        own = [fs for fs in sets[task] if cnn and fs.backbones == (cnn[0],)]
        fused = fusion_feature_set(sets[task], backbones) if config.fusion else None
        if own or fused is not None:
            features = fused if fused is not None else max(own, key=lambda fs: len(fs.parts))
            chosen.append(
                Candidate(task, features, "temporal", config.model_params("temporal", task))
            )
    return chosen


def select_candidates(
    config: HeadsConfig,
    backbones: Mapping[str, Collection[str]],
    tasks: list[str] | None = None,
    refs: list[str] | None = None,
    *,
    features_dir: Path | None = None,
    problems: list[str] | None = None,
) -> list[Candidate]:
    """Candidates to train: explicit refs, else the config's list, else the defaults.

    A ref (``SPEC/MODEL``) applies to every selected task. `features_dir` and `problems`
    (feature files that are present but unusable, with why) make the errors precise.
    """
    problems = problems or []
    tasks = list(tasks or TASKS)
    for task in tasks:
        get_task(task)
    if refs:
        chosen = []
        for ref in refs:
            features, model = parse_candidate_ref(ref)
            chosen += [
                Candidate(task, features, model, config.model_params(model, task)) for task in tasks
            ]
    elif config.candidates is not None:
        chosen = [
            Candidate(
                c.task, c.features, c.model, {**config.model_params(c.model, c.task), **c.params}
            )
            for c in config.candidates
            if c.task in tasks
        ]
    else:
        sets = default_feature_sets(backbones, fusion=config.fusion)
        chosen = [
            Candidate(task, features, model, config.model_params(model, task))
            for task in tasks
            for features in sets[task]
            for model in config.models
        ]
        if config.temporal and "temporal" not in config.models:
            chosen += temporal_candidates(config, backbones, tasks)
    if not backbones and not refs:
        raise InputError(
            f"no complete feature file in {features_dir or 'the cache'}: run `pipeline extract` "
            "first" + (f" ({'; '.join(problems)})" if problems else "")
        )
    missing = sorted({b for c in chosen for b in c.features.backbones} - set(backbones))
    if missing:
        raise InputError(
            f"no complete feature file for {', '.join(missing)}: run `pipeline extract` "
            f"(available: {', '.join(backbones) or 'none'})"
            + (f"; {'; '.join(problems)}" if problems else "")
        )
    if not chosen:
        raise InputError(
            "no candidates to train for tasks " + ", ".join(tasks) + " (the config lists none)"
        )
    return chosen
