"""The optional EXPR blend stages on planted data: logit adjustment and confidence gating,
each kept where it helps the cross-fitted score and switched off where it does not."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from affectpipe import metrics
from affectpipe.blend.stages import GateSources, load_gate_sources, log_prior, mapped_probabilities
from affectpipe.blend.task_rules import rules_for
from affectpipe.blend.tuning import BlendOptions, tune_task
from affectpipe.config import DatasetPaths
from affectpipe.features import write_feature_file

RULES = rules_for("expr")
SKEW = np.array([0.40, 0.25, 0.15, 0.09, 0.05, 0.03, 0.02, 0.01])
FAST = BlendOptions(smoothing=False, max_steps=1)  # stages under test only


def _rows(n: int, n_videos: int, rng: np.random.Generator, prior=SKEW):
    labels = rng.choice(8, size=n, p=prior / prior.sum())
    groups = np.repeat(np.arange(n_videos), n // n_videos)
    frames = np.tile(np.arange(1, n // n_videos + 1), n_videos)
    return labels, groups, frames


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _tune(probs, labels, groups, frames, options=FAST, **inputs):
    """`inputs`: the stages' inputs by stage name (logit_adjustment=, gating=)."""
    fitted, (outputs, _) = tune_task(RULES, probs[None], labels, groups, frames, options, inputs)
    return fitted, outputs


def _tau(blend) -> float:
    """The logit adjustment's tau in force (0 when it is not)."""
    return blend.in_force.get("logit_adjustment", {"tau": 0.0})["tau"]


def _gate(blend):
    """The confidence gate in force (None when it is not)."""
    return blend.in_force.get("gating")


def test_logit_adjustment_undoes_a_prior_bias_that_offsets_cannot_reach():
    rng = np.random.default_rng(0)
    labels, groups, frames = _rows(6000, 12, rng)
    # A head that over-trusts the prior: 1.5 * log prior spans ~6 nats, the offsets +-1.
    logits = 2.5 * np.eye(8)[labels] + rng.normal(0, 1, (6000, 8)) + 1.5 * np.log(SKEW)
    probs = _softmax(logits)
    on, on_out = _tune(probs, labels, groups, frames, logit_adjustment=log_prior(SKEW))
    off, off_out = _tune(
        probs,
        labels,
        groups,
        frames,
        BlendOptions(smoothing=False, max_steps=1, disabled_stages=("logit_adjustment",)),
        logit_adjustment=log_prior(SKEW),
    )
    assert on.kept["logit_adjustment"] and _tau(on) > 0  # on top of the offsets
    assert not off.kept["logit_adjustment"] and _tau(off) == 0
    assert metrics.expr_f1(labels, on_out) > metrics.expr_f1(labels, off_out) + 0.03
    # The stage table's cross-fitted rows say the same.
    cf = on.crossfit_stage_scores
    assert cf["logit_adjustment"] > cf["smoothing"] + 0.03
    assert on.crossfit_stage_scores["logit_adjustment"] == pytest.approx(
        metrics.expr_f1(labels, on_out)
    )


def test_logit_adjustment_is_switched_off_when_the_prior_misleads():
    rng = np.random.default_rng(1)
    labels, groups, frames = _rows(6000, 12, rng)
    probs = _softmax(2.5 * np.eye(8)[labels] + rng.normal(0, 1, (6000, 8)))
    # The "training prior" is the reverse of the validation one: every tau hurts.
    misleading = log_prior(SKEW[::-1])
    on, on_out = _tune(probs, labels, groups, frames, logit_adjustment=misleading)
    _, plain_out = _tune(probs, labels, groups, frames)
    assert not on.kept["logit_adjustment"] and _tau(on) == 0
    np.testing.assert_array_equal(on_out, plain_out)


def _gate_data(seed: int, truthful: bool):
    rng = np.random.default_rng(seed)
    labels, groups, frames = _rows(4000, 10, rng, prior=np.ones(8))
    probs = _softmax(0.8 * np.eye(8)[labels] + rng.normal(0, 1, (4000, 8)))
    confident = rng.random(4000) < 0.4
    said = np.where(truthful, labels, rng.integers(0, 8, 4000))
    source = np.full((4000, 8), 0.1, np.float32)
    source[np.arange(4000), np.where(confident, said, rng.integers(0, 8, 4000))] = 0.3
    source[confident] = 0.01
    source[np.flatnonzero(confident), said[confident]] = 0.93
    source[rng.random(4000) < 0.05] = np.nan  # features not ok: never gated
    sources = GateSources(["backbone-a"], source[None])
    return probs, labels, groups, frames, sources


def test_gating_takes_a_confident_backbone_where_it_is_right():
    probs, labels, groups, frames, sources = _gate_data(2, truthful=True)
    on, on_out = _tune(probs, labels, groups, frames, gating=sources)
    off, off_out = _tune(probs, labels, groups, frames)
    assert on.kept["gating"] and _gate(on)["source"] == "backbone-a"
    assert 0.3 < _gate(on)["threshold"] <= 0.93
    assert metrics.expr_f1(labels, on_out) > metrics.expr_f1(labels, off_out) + 0.1
    assert _gate(off) is None
    # rows without ok features keep the blend's decision
    nan_rows = ~np.isfinite(sources.values[0]).all(axis=1)
    np.testing.assert_array_equal(on_out[nan_rows], off_out[nan_rows])


def test_gating_is_switched_off_when_the_confident_backbone_is_wrong():
    probs, labels, groups, frames, sources = _gate_data(3, truthful=False)
    on, on_out = _tune(probs, labels, groups, frames, gating=sources)
    _, off_out = _tune(probs, labels, groups, frames)
    assert not on.kept["gating"] and _gate(on) is None
    np.testing.assert_array_equal(on_out, off_out)
    assert on.crossfit_stage_scores["gating"] <= on.crossfit_stage_scores["smoothing"] + 1e-5


def test_mapped_probabilities_follow_the_abaw_index_and_a_missing_class():
    logits = np.array([[0.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 9.0]], np.float32)
    index = [1, 2, 0, 3, 4, 5, 6, 7]  # ABAW code 0 is logit 1, code 1 is logit 2, ...
    probs = mapped_probabilities(logits, index)
    assert probs.argmax() == 0 and probs.sum() == pytest.approx(1.0)  # column 8 not mapped
    seven = mapped_probabilities(logits[:, :7], [0, 1, 2, 3, 4, 5, 6, None])  # FER2013: no Other
    assert seven[0, 7] == 0 and seven.sum() == pytest.approx(1.0)


def test_gate_sources_are_read_from_feature_files_joined_to_manifest_rows(tmp_path):
    paths = DatasetPaths.of(tmp_path, "tiny")
    paths.features_dir.mkdir(parents=True)
    images = np.array(["v/3.jpg", "v/1.jpg", "v/2.jpg"])
    logits = np.zeros((3, 8), np.float32)
    logits[0, 5], logits[1, 2], logits[2, 7] = 8.0, 8.0, 8.0
    attrs = {"backbone": "bb", "abaw_expr_index": list(range(8)), "logit_names": ["x"] * 8}
    ok = np.array([True, True, False])
    write_feature_file(paths.features("bb"), images, np.zeros((3, 4)), ok, attrs, logits=logits)
    no_map = {"backbone": "plain", "logit_names": ["x"] * 8}  # logits without ABAW mapping
    write_feature_file(paths.features("plain"), images, np.zeros((3, 4)), ok, no_map, logits)
    manifest = pd.DataFrame({"image": ["v/1.jpg", "v/2.jpg", "v/3.jpg", "v/1.jpg"]})
    sources = load_gate_sources(paths, manifest, np.array([0, 1, 2, 3]))
    assert sources.names == ["bb"]
    values = sources.values[0]
    assert values[0].argmax() == 2 and values[2].argmax() == 5 and values[3].argmax() == 2
    assert np.isnan(values[1]).all()  # v/2.jpg is not ok


@pytest.mark.slow
def test_report_has_stage_table_and_time_series_of_temporal_candidates(tmp_path):
    from affectpipe import predictions
    from affectpipe.blend import synthetic
    from affectpipe.blend.runner import run as blend_run
    from affectpipe.schema import PRED_COLUMNS

    paths = synthetic.write_synthetic_run(DatasetPaths.of(tmp_path, "synth"), n_candidates=2)
    outputs, base = {}, None
    for task in ("va", "expr", "au"):  # the same run, its second candidate named temporal
        frames = {m: pd.read_parquet(paths.preds("default", task, m)) for m in ("cand0", "cand1")}
        base = frames["cand0"][["row", "image", "split"]]
        columns = list(PRED_COLUMNS[task])
        outputs[task] = {
            "cand0": frames["cand0"][columns].to_numpy(np.float32),
            "feats__temporal": frames["cand1"][columns].to_numpy(np.float32),
        }
    for task in outputs:
        paths.preds("default", task, "cand1").unlink()
    predictions.write_prediction_run(paths, "default", base, outputs)
    result = blend_run(paths, progress=False)
    text = result.report.read_text()
    assert text.count("Time series on validation videos") == 3
    assert text.count("<th>kept</th>") == 3
    assert "+ logit adjustment (tau * log prior)" in text and "+ confidence gating" in text
    document = result.blend_json.read_text()
    assert '"crossfit_stage_scores"' in document and '"kept"' in document


def test_every_stage_is_kept_only_when_the_crossfit_supports_it():
    """`decide_stages` on crafted cross-fitted scores: the correction and smoothing are
    judged as a pair (a combination with more stages must beat every simpler one), then
    the optional stages over what is kept; ties show no gain."""
    from affectpipe.blend.synthetic import synthetic_task
    from affectpipe.blend.tuning import SMOOTHING_ALONE, decide_stages, fit_task

    data = synthetic_task("expr", n_rows=3000, n_videos=12, n_candidates=3, seed=1)
    fitted = fit_task(
        RULES,
        data.candidates,
        data.labels,
        data.order,
        BlendOptions(),
        {"logit_adjustment": log_prior(SKEW)},
    )

    def decide(blend, offsets, alone, both, **optional):
        scores = {
            "blend": blend,
            "offsets": offsets,
            SMOOTHING_ALONE: alone,
            "smoothing": both,
            "logit_adjustment": optional.get("adjusted", both),
            "gating": optional.get("gated", both),
            "logit_adjustment+gating": optional.get("adjusted", both),
        }
        return decide_stages(RULES, fitted, BlendOptions(), scores, {})

    # smoothing whose cross-fitted score fell (the real-photos case): dropped, re-tune
    _, dropped = decide(0.40, 0.45, 0.41, 0.42)
    assert dropped == ["smoothing"]
    assert fitted.decisions["offsets"]["kept"] and not fitted.decisions["smoothing"]["kept"]
    assert "logit_adjustment" not in fitted.decisions  # judged after the re-tune
    _, dropped = decide(0.40, 0.45, 0.41, 0.45)  # a tie shows no gain
    assert dropped == ["smoothing"]
    # offsets that lose on the raw mix but win on smoothed outputs stay (the demo's case)
    kept, dropped = decide(0.40, 0.38, 0.42, 0.46)
    assert dropped == [] and kept.decisions["offsets"]["kept"]
    assert kept.decisions["offsets"]["without"] == 0.42  # judged against smoothing alone
    _, dropped = decide(0.40, 0.38, 0.42, 0.42)
    assert dropped == ["correction"]
    _, dropped = decide(0.40, 0.39, 0.39, 0.40)
    assert dropped == ["correction", "smoothing"]
    # gating that does not raise the score over the kept stages goes, without a re-tune
    kept, dropped = decide(0.40, 0.45, 0.43, 0.47, adjusted=0.47, gated=0.46)
    assert dropped == [] and not kept.decisions["gating"]["kept"] and _gate(kept) is None


def test_a_correction_that_loses_on_the_raw_mix_but_wins_after_smoothing_is_kept():
    """VA on planted data: the calibration alone cross-fits below the raw mix, but on the
    smoothed mix it raises the cross-fitted score, so the pair keeps both."""
    from affectpipe.blend.synthetic import synthetic_task

    rules = rules_for("va")
    data = synthetic_task("va", n_rows=3000, n_videos=12, n_candidates=4, seed=1)
    fitted, _ = tune_task(
        rules, data.candidates, data.labels, data.groups, data.frames, BlendOptions(n_jobs=1)
    )
    assert fitted.crossfit_stage_scores["calibration"] < fitted.crossfit_stage_scores["blend"]
    for stage in ("calibration", "smoothing"):
        entry = fitted.decisions[stage]
        assert entry["kept"] and entry["crossfit"] > entry["without"]
    assert fitted.post != rules.identity_post() and fitted.half_width > 0
