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

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affectpipe.errors import InputError
from affectpipe.extract import registry
from affectpipe.heads.featuresets import FeatureSet, parse_feature_set
from affectpipe.heads.models import MODELS
from affectpipe.heads.tasks import get_task
from affectpipe.schema import TASKS

DEFAULT_MODELS: tuple[str, ...] = ("linear", "mlp")
DEFAULT_TEMPORAL = True  # measured on the demo: docs/benchmarks.md, "Temporal heads"


@dataclass(frozen=True)
class Candidate:
    task: str
    features: FeatureSet
    model: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def name(self) -> str:
        return f"{self.features.slug}__{self.model}"

    def __str__(self) -> str:
        return f"{self.task}/{self.name}"


def parse_candidate_ref(text: str) -> tuple[FeatureSet, str]:
    """``SPEC/MODEL`` or the file-name form ``SLUG__MODEL`` -> (feature set, model)."""
    if "/" in text:
        spec, _, model = text.rpartition("/")
    elif "__" in text:
        spec, _, model = text.rpartition("__")
    else:
        raise InputError(
            f"candidate {text!r}: expected FEATURES/MODEL, e.g. mt-emotieffnet:logits/mlp"
        )
    if model not in MODELS:
        raise InputError(f"candidate {text!r}: unknown model {model!r} ({', '.join(MODELS)})")
    return parse_feature_set(spec), model


def default_feature_sets(backbones: dict[str, list[str]]) -> dict[str, list[FeatureSet]]:
    """Default feature sets per task for the backbones present (backbone -> its parts): the
    feature sets each backbone's registration lists per task (`affectpipe.extract.registry`,
    torch-free), those whose parts its file has."""
    sets: dict[str, list[FeatureSet]] = {task: [] for task in TASKS}
    for backbone, parts in backbones.items():
        rules = registry.default_parts(backbone, parts)
        for task in TASKS:
            found = rules.get(task, [])
            sets[task] += [FeatureSet(tuple((backbone, part) for part in r)) for r in found]
    return sets


@dataclass
class HeadsConfig:
    seed: int = 0
    n_components: int = 128
    workers: int = 0  # processes fitting candidates in parallel (0 = one per usable core)
    models: tuple[str, ...] = DEFAULT_MODELS
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    candidates: list[Candidate] | None = None
    temporal: bool = DEFAULT_TEMPORAL  # one `temporal` candidate per task among the defaults

    def model_params(self, model: str, task: str) -> dict[str, Any]:
        """Params of `model` for `task`: model-wide keys, then the task's own table."""
        table = dict(self.params.get(model, {}))
        per_task = {t: table.pop(t) for t in TASKS if isinstance(table.get(t), dict)}
        return {**table, **per_task.get(task, {})}


def load_config(path: Path | None) -> HeadsConfig:
    """Read the ``[heads]`` table of a TOML file (defaults when `path` is None)."""
    if path is None:
        return HeadsConfig()
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle).get("heads", {})
    except FileNotFoundError:
        raise InputError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    known = {"seed", "n_components", "workers", "models", "params", "candidates", "temporal"}
    unknown = set(raw) - known
    if unknown:
        raise InputError(f"{path}: unknown keys in [heads]: {', '.join(sorted(unknown))}")
    models = tuple(raw.get("models", DEFAULT_MODELS))
    for model in [*models, *raw.get("params", {})]:
        if model not in MODELS:
            raise InputError(f"{path}: unknown model {model!r} ({', '.join(MODELS)})")
    candidates = None
    if "candidates" in raw:
        candidates = []
        for i, entry in enumerate(raw["candidates"], start=1):
            missing = {"task", "features", "model"} - set(entry)
            if missing:
                raise InputError(f"{path}: candidate {i} lacks {', '.join(sorted(missing))}")
            if entry["model"] not in MODELS:
                raise InputError(f"{path}: candidate {i}: unknown model {entry['model']!r}")
            get_task(entry["task"])
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
    )


def temporal_candidates(
    config: HeadsConfig, backbones: dict[str, list[str]], tasks: list[str]
) -> list[Candidate]:
    """One `temporal` candidate per task, on the widest default feature set (embedding and
    logits) of the first backbone with logits (a CNN) by feature-file name: sequence models
    cost more than frame heads, so they are not trained on every feature set (ask for more
    with --candidate)."""
    sets = default_feature_sets(backbones)
    cnn = [name for name, parts in backbones.items() if "logits" in parts]
    chosen = []
    for task in tasks:
        own = [fs for fs in sets[task] if cnn and fs.backbones == (cnn[0],)]
        if own:
            features = max(own, key=lambda fs: len(fs.parts))
            chosen.append(
                Candidate(task, features, "temporal", config.model_params("temporal", task))
            )
    return chosen


def select_candidates(
    config: HeadsConfig,
    backbones: dict[str, list[str]],
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
        sets = default_feature_sets(backbones)
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
