"""The built-in blend stages after the base (`blend.stage_registry`): logit adjustment and
confidence gating, for tasks with exclusive classes (EXPR).

Logit adjustment (Menon et al., 2021): the smoothed class probabilities p become
softmax(log p - tau * log prior), prior being the training label frequencies; one parameter
tau, tuned on validation (tau > 0 favours rare classes, tau < 0 frequent ones). The class
offsets are re-tuned once on the adjusted scores.

Confidence gating (as the ABAW8 expression winners did): where a backbone's own expression
prediction (its logits mapped to ABAW codes, softmaxed) is at least `threshold` confident,
its arg-max replaces the blend's decision. The backbone and threshold are tuned on validation.

Both are tuned inside every blend fit, so the cross-fit measures them honestly; the run keeps
each only when it raises the cross-fitted score (see `tuning.decide_stages`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from affectpipe.blend.calibration import log_probs, macro_f1_from_pairs
from affectpipe.blend.stage_registry import (
    DECISIONS,
    TOL,
    VALUES,
    BlendInputs,
    BlendStage,
    PredictInputs,
    StageFit,
    register_blend_stage,
)
from affectpipe.errors import InputError
from affectpipe.metrics import N_EXPR
from affectpipe.untrusted import FINITE, NAME, finite_array

TAU_GRID = np.round(np.arange(-1.0, 2.0001, 0.25), 10)
GATE_GRID = np.round(np.arange(0.30, 0.9901, 0.02), 10)  # confidence thresholds
PRIOR_FLOOR = 1e-3  # a class absent from training counts as this frequent
_NULL = {"type": "null"}


def log_prior(prior: np.ndarray) -> np.ndarray:
    prior = np.asarray(prior, dtype=np.float64)
    return np.log(np.maximum(prior / max(prior.sum(), 1e-12), PRIOR_FLOOR))


def adjust(probs: np.ndarray, log_prior_: np.ndarray | None, tau: float) -> np.ndarray:
    """softmax(log p - tau * log prior), float32; the input itself when tau is 0."""
    if tau == 0 or log_prior_ is None:
        return probs
    scores = log_probs(probs) - np.float32(tau) * log_prior_.astype(np.float32)
    scores -= scores.max(axis=1, keepdims=True)
    out = np.exp(scores)
    return (out / out.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class GateSources:
    """Backbones' own expression probabilities, in ABAW code order, on the blend's rows.

    values [G, N, 8]: softmax over the mapped logits (0 for a code the backbone lacks), NaN
    on rows whose features are missing or not ok.
    """

    names: list[str]
    values: np.ndarray

    def take(self, rows: np.ndarray) -> GateSources:
        return GateSources(self.names, self.values[:, rows])

    def confidence(self) -> tuple[np.ndarray, np.ndarray]:
        """(max probability [G, N] with -1 where NaN, arg-max code [G, N])."""
        finite = np.isfinite(self.values).all(axis=2)
        filled = np.where(finite[..., None], self.values, 0.0)
        return np.where(finite, filled.max(axis=2), -1.0), filled.argmax(axis=2)


def apply_gate(
    decisions: np.ndarray, sources: GateSources | None, gate: dict[str, Any] | None
) -> np.ndarray:
    """Replace decisions where the gate's backbone is at least `threshold` confident."""
    if gate is None or sources is None:
        return decisions
    if gate["source"] not in sources.names:
        raise ValueError(f"gating backbone {gate['source']!r} is not among {sources.names}")
    g = sources.names.index(gate["source"])
    confidence, code = sources.confidence()
    take = confidence[g] >= gate["threshold"]
    return np.where(take, code[g], decisions).astype(decisions.dtype)


def fit_gate(
    labels: np.ndarray, decisions: np.ndarray, sources: GateSources | None
) -> tuple[dict[str, Any] | None, float]:
    """Best (backbone, threshold) by macro F1 on labelled rows, or None when no gate beats
    the decisions as they are. Ties go to the higher threshold (fewer replaced rows)."""
    base = float(macro_f1_from_pairs(labels, decisions[None])[0])
    if sources is None or not sources.names:
        return None, base
    confidence, code = sources.confidence()
    best, gate = base, None
    for g, name in enumerate(sources.names):
        preds = np.where(confidence[g][None] >= GATE_GRID[:, None], code[g][None], decisions[None])
        f1 = macro_f1_from_pairs(labels, preds, len(GATE_GRID))
        pick = int(np.lexsort((GATE_GRID, f1))[-1])
        if f1[pick] > best + 1e-9:
            best, gate = float(f1[pick]), {"source": name, "threshold": float(GATE_GRID[pick])}
    return gate, best


def mapped_probabilities(logits: np.ndarray, abaw_index: list) -> np.ndarray:
    """Softmax over the logits that map to ABAW codes, in code order; a code without a logit
    (entry None or negative, e.g. "Other" for a 7-class model) gets probability 0."""
    present = [c for c, i in enumerate(abaw_index) if i is not None and int(i) >= 0]
    picked = logits[:, [int(abaw_index[c]) for c in present]].astype(np.float64)
    picked -= picked.max(axis=1, keepdims=True)
    soft = np.exp(picked)
    soft /= soft.sum(axis=1, keepdims=True)
    out = np.zeros((len(logits), N_EXPR), dtype=np.float32)
    out[:, present] = soft
    return out


def load_gate_sources(paths: Any, manifest: pd.DataFrame, rows: np.ndarray) -> GateSources:
    """Mapped expression probabilities of every cached backbone whose feature file records
    an ABAW class mapping, joined to manifest `rows` as the heads join features.

    Files that are incomplete, shards, without logits or unreadable are no gate source
    (the stages that read them report them)."""
    from affectpipe.featuresets import load_feature_set, load_part, parse_feature_set

    names, values = [], []
    for path in sorted(paths.features_dir.glob("*.h5")):
        try:
            _, handle = load_part(path, "logits")
        except (InputError, OSError, KeyError):
            continue
        index = handle.attrs.get("abaw_expr_index")
        if handle.attrs.get("shard") or not index or len(index) != N_EXPR:
            continue
        loaded = load_feature_set(paths, parse_feature_set(f"{path.stem}:logits"), manifest)
        probs = mapped_probabilities(loaded.take(rows), index)
        probs[~loaded.ok[rows]] = np.nan
        names.append(path.stem)
        values.append(probs)
    stacked = np.stack(values) if values else np.zeros((0, len(rows), N_EXPR), np.float32)
    return GateSources(names, stacked)


def _fit_adjustment(
    smoothed: np.ndarray, log_prior_: np.ndarray, job: StageFit
) -> tuple[float, dict[str, Any]]:
    """(tau, correction re-tuned on the adjusted scores); tau 0 when no tau helps.

    Taus are tried nearest 0 first, taking only strict improvements, so ties keep the
    smaller correction."""
    best_tau, best = 0.0, job.score(smoothed, job.post)
    for tau in sorted(TAU_GRID, key=abs):
        if tau == 0:
            continue
        trial = job.score(adjust(smoothed, log_prior_, tau), job.post)
        if trial > best + TOL:
            best_tau, best = float(tau), trial
    if best_tau == 0:
        return 0.0, job.post
    refit, refit_score = job.tuned_post(adjust(smoothed, log_prior_, best_tau))
    return best_tau, (refit if refit_score > best else job.post)


class LogitAdjustment(BlendStage):
    name = "logit_adjustment"
    label = "+ logit adjustment (tau * log prior)"
    help = "No EXPR tau * log(prior) class correction."
    acts_on = VALUES
    json_schema = {
        "anyOf": [
            _NULL,
            {
                "type": "object",
                "properties": {
                    "tau": {**FINITE, "minimum": -100, "maximum": 100},
                    "tuned_tau": {**FINITE, "minimum": -100, "maximum": 100},
                    "log_prior": {"anyOf": [_NULL, finite_array(N_EXPR, -1000, 0)]},
                },
            },
        ]
    }

    def applies_to(self, rules: Any) -> bool:
        return rules.task.exclusive_classes

    def inputs(self, blend: BlendInputs) -> np.ndarray:
        return log_prior(blend.prior)

    def fit(self, x: np.ndarray, job: StageFit) -> tuple[Any, dict[str, Any]]:
        tau, post = _fit_adjustment(x, job.inputs, job)
        return ({"tau": tau, "log_prior": job.inputs} if tau else None), post

    def apply(self, params: Any, x: np.ndarray, inputs: Any) -> np.ndarray:
        return adjust(x, params["log_prior"], params["tau"])

    def to_json(self, in_force: Any, tuned: Any) -> Any:
        shown = in_force or tuned
        return {
            "tau": in_force["tau"] if in_force else 0.0,
            "tuned_tau": tuned["tau"] if tuned else 0.0,
            "log_prior": None if shown is None else shown["log_prior"].tolist(),
        }

    def from_json(self, entry: Any) -> Any:
        tau = float((entry or {}).get("tau", 0.0))
        if tau == 0:
            return None
        if entry.get("log_prior") is None:
            raise ValueError("logit adjustment without its log prior")
        return {"tau": tau, "log_prior": np.asarray(entry["log_prior"], dtype=np.float64)}

    def describe(self, params: Any) -> str:
        return f"tau {params['tau']:+.2f}"


class ConfidenceGating(BlendStage):
    name = "gating"
    label = "+ confidence gating by a backbone"
    help = "No EXPR gating by a confident backbone's own prediction."
    acts_on = DECISIONS
    json_schema = {
        "anyOf": [
            _NULL,
            {
                "type": "object",
                "required": ["source", "threshold"],
                "properties": {
                    "source": NAME,
                    "threshold": {**FINITE, "minimum": 0, "maximum": 1},
                },
            },
        ]
    }

    def applies_to(self, rules: Any) -> bool:
        return rules.task.exclusive_classes

    def inputs(self, blend: BlendInputs) -> GateSources:
        return load_gate_sources(blend.paths, blend.manifest, blend.rows)

    def take(self, inputs: Any, rows: np.ndarray) -> Any:
        return inputs.take(rows)

    def predict_inputs(self, params: Any, predict: PredictInputs) -> GateSources:
        """The gating backbone's own expression probabilities on the rows."""
        name = params["source"]
        record = predict.records.get(name)
        index = record.identity.get("abaw_expr_index") if record is not None else None
        if not index:
            raise InputError(f"{name}: the gating backbone's class mapping is not recorded")
        logits = predict.features.arrays[name]["logits"][predict.rows]
        return GateSources([name], mapped_probabilities(logits, list(index))[None])

    def fit(self, x: np.ndarray, job: StageFit) -> tuple[Any, dict[str, Any]]:
        gate, _ = fit_gate(job.labels, x, job.inputs)
        return gate, job.post

    def apply(self, params: Any, x: np.ndarray, inputs: Any) -> np.ndarray:
        return apply_gate(x, inputs, params)

    def to_json(self, in_force: Any, tuned: Any) -> Any:
        return in_force

    def from_json(self, entry: Any) -> Any:
        if not entry:
            return None
        return {"source": str(entry["source"]), "threshold": float(entry["threshold"])}

    def describe(self, params: Any) -> str:
        return f"{params['source']} >= {params['threshold']:.2f}"

    def backbones(self, params: Any) -> list[str]:
        return [params["source"]]


register_blend_stage(LogitAdjustment())
register_blend_stage(ConfidenceGating())
