"""The detector's calibrated score (trainer/calibration.py) and the threshold chosen on it
(trainer/detector_card.operating_threshold): fitted on validation sources only, monotone, a
probability, baked into the ONNX probe as torch computes it, and keeping its FPR promise on
held-out sources of a synthetic setup shaped like the demo's stores. No server."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from equiprobe.trainer.calibration import (Calibration, CalibrationError, calibration_quality, fit_calibration,
                                           fit_platt, prior_weights, raw_log_odds)
from equiprobe.trainer.detector_card import format_card, fpr_interval, operating_threshold
from equiprobe.trainer.detector_scores import SCORES, card_for, load_scores
from equiprobe.trainer.probe_export import export_probes, read_probe
from equiprobe.trainer.probes import ProbeConfig
from equiprobe.trainer.train import train_probes

from .test_trainer import synthetic_store

TARGET = 0.05


def _logit(p):
    return np.log(p) - np.log1p(-p)


# -- a synthetic detector shaped like the demo's ------------------------------------------------------

def sources(rng, n_sources: int, crops: int, edits: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw log-odds r of `crops` originals and `crops * edits` edited versions per source, as the
    fine probe gives them: a per-source offset (a source whose photographs look edited, or not),
    originals around 1.5 with a long right tail (the 31-way softmax calls most uploads edited:
    1 - P(identity) ~ 0.8), edited versions spread widely above. Returns r, edited, source."""
    images = n_sources * crops
    offset = np.repeat(rng.normal(0.0, 0.8, n_sources), crops)  # per source, shared by its crops
    originals = 1.5 + offset + rng.gumbel(0.0, 0.9, images)
    versions = 4.5 + offset[:, None] + rng.normal(0.0, 2.5, (images, edits))
    r = np.concatenate([originals[:, None], versions], axis=1).ravel()
    edited = np.tile(np.r_[False, np.ones(edits, bool)], images)
    return r, edited, np.repeat(np.arange(n_sources), crops * (edits + 1))


def old_rule(scores, manipulated, target):
    """The threshold rule this replaced: the smallest observed score with validation FPR <= target."""
    originals = np.sort(scores[~manipulated])
    candidates = np.unique(scores)
    false_pos = originals.size - np.searchsorted(originals, candidates, side="left")
    return float(candidates[false_pos <= target * originals.size + 1e-9][0])


def held_out_fpr(rng, val_crops: int, rule=operating_threshold) -> tuple[float, float]:
    """(validation FPR, test FPR) of one deployment: calibration and threshold from 40 validation
    sources, FPR measured on 4000 new test sources (so the test figure is the true FPR to +-0.004)."""
    r, edited, group = sources(rng, 40, val_crops)
    calibration = fit_calibration(r, edited, group)
    val_scores = calibration.probability(r).astype(np.float32)
    threshold = rule(val_scores, edited, TARGET)
    test_r, test_edited, _ = sources(rng, 4000, 1, edits=1)
    test_scores = calibration.probability(test_r[~test_edited]).astype(np.float32)
    return float((val_scores[~edited] >= threshold).mean()), float((test_scores >= threshold).mean())


def test_threshold_keeps_its_promise_on_held_out_sources():
    """Over 150 deployments each: with one original per validation source (the demo's stores, 40
    sources), the old rule's test FPR averaged 0.07 for a 0.05 target; the new rule is centred on
    the target; with three crops per validation source (120 originals) 90% of deployments land
    within 0.03 of it."""
    rng = np.random.default_rng(7)
    figures = {}
    for name, crops, rule in (("old rule, 40 originals", 1, old_rule), ("new rule, 40 originals", 1, operating_threshold),
                              ("new rule, 120 originals", 3, operating_threshold)):
        test = np.array([held_out_fpr(rng, crops, rule)[1] for _ in range(150)])
        figures[name] = (float(test.mean()), float(np.mean(np.abs(test - TARGET) <= 0.03)))
    print("\ntest FPR for target 0.05 (mean, share of deployments within 0.03):", figures)
    assert figures["old rule, 40 originals"][0] > TARGET + 0.012, figures  # the bias of the empirical rule
    assert abs(figures["new rule, 40 originals"][0] - TARGET) < 0.01  # centred on the target
    assert abs(figures["new rule, 120 originals"][0] - TARGET) < 0.01
    assert figures["new rule, 120 originals"][1] >= 0.85
    assert figures["new rule, 120 originals"][1] > figures["new rule, 40 originals"][1] > figures["old rule, 40 originals"][1]
    # The card's interval says the same thing: ~0.7 of the mass at 40 originals, ~0.9 at 120.
    for n, low, high in ((40, 0.0, 0.12), (120, 0.02, 0.09)):
        lo, hi = fpr_interval(n, TARGET)
        assert low <= lo < TARGET < hi <= high, (n, lo, hi)


def test_one_realistic_deployment():
    """One draw, the numbers a user sees: 40 validation sources with three crops each."""
    val_fpr, test_fpr = held_out_fpr(np.random.default_rng(11), 3)
    print(f"\nvalidation FPR {val_fpr:.3f}, test FPR {test_fpr:.3f} (target {TARGET})")
    assert abs(test_fpr - TARGET) <= 0.03 and abs(val_fpr - TARGET) <= 0.03


# -- the calibration ----------------------------------------------------------------------------------

def test_platt_recovers_the_log_likelihood_ratio_under_the_equal_prior():
    # Originals r ~ N(0, 1), edited r ~ N(2, 1), 1:3 as many originals: the log-likelihood ratio is
    # 2r - 2, which is P(edited)'s log-odds when edited and original are equally likely a priori.
    rng = np.random.default_rng(0)
    r = np.r_[rng.normal(0, 1, 4000), rng.normal(2, 1, 12000)]
    edited = np.r_[np.zeros(4000, bool), np.ones(12000, bool)]
    a, b = fit_platt(r, edited)
    assert a == pytest.approx(2.0, abs=0.1) and b == pytest.approx(-2.0, abs=0.1)
    calibration = fit_calibration(r, edited, np.arange(len(r)) % 200)
    assert calibration.kind == "platt"  # the true map is a sigmoid: isotonic is not clearly better
    assert calibration.probability(1.0) == pytest.approx(0.5, abs=0.03)  # halfway between the classes: 0.5
    # A probability that reads as one: small calibration error, far below the raw 1 - P(identity)'s.
    p = calibration.probability(r)
    assert calibration_quality(p, edited)["ece"] < 0.02
    assert calibration_quality(p, edited)["log_loss"] < calibration_quality(1 / (1 + np.exp(-r)), edited)["log_loss"]


def test_weights_state_the_prior():
    edited = np.r_[np.zeros(10, bool), np.ones(300, bool)]
    w = prior_weights(edited)
    assert w[edited].sum() == pytest.approx(w[~edited].sum()) and w.mean() == pytest.approx(1.0)
    with pytest.raises(CalibrationError, match="originals and edited"):
        prior_weights(np.ones(5, bool))


def test_isotonic_wins_only_where_the_sigmoid_misfits():
    # Edited versions of two kinds, a subtle one just above the originals and a strong one far
    # above: P(edited) rises, flattens, and rises again, which no sigmoid of r follows.
    rng = np.random.default_rng(1)
    r, edited, group = [], [], []
    for s in range(300):
        r += [rng.normal(0, 1)] + list(rng.normal(1.0, 0.5, 15)) + list(rng.normal(8, 0.5, 15))
        edited += [False] + [True] * 30
        group += [s] * 31
    calibration = fit_calibration(np.array(r), np.array(edited), np.array(group))
    cv = calibration.cross_validated_log_loss
    assert calibration.kind == "isotonic" and cv["isotonic"] < cv["platt"] < cv["raw"]
    assert cv["isotonic_gain"] > cv["isotonic_gain_se"]


@pytest.mark.parametrize("kind", ["platt", "isotonic"])
def test_calibration_is_monotone_and_a_probability(kind):
    r, edited, group = sources(np.random.default_rng(2), 40, 1)
    calibration = fit_calibration(r, edited, group, kind=kind)
    grid = np.linspace(-60, 60, 4001)
    p = calibration.probability(grid)
    assert (0 <= p).all() and (p <= 1).all() and (np.diff(p) >= 0).all()
    inside = (grid > min(r)) & (grid < max(r))  # strictly increasing where scores lie, beyond the end knots too
    assert (np.diff(p[inside]) > 0).all()
    served = calibration.module(0)(torch.tensor(np.c_[np.zeros_like(grid), grid], dtype=torch.float32))[:, 0].numpy()
    assert (0 <= served).all() and (served <= 1).all() and (np.diff(served) >= -1e-7).all()
    np.testing.assert_allclose(served, p, atol=2e-6)
    # Recorded and read back: the same map.
    again = Calibration.from_dict(json.loads(json.dumps(calibration.as_dict())))
    np.testing.assert_array_equal(again.probability(grid), p)
    # The raw score at the same operating point maps back onto the threshold.
    for t in calibration.probability(np.quantile(r, [0.2, 0.5, 0.8])):
        raw = calibration.raw_threshold(t)
        assert calibration.probability(_logit(raw)) == pytest.approx(t, abs=1e-6)


def test_raw_log_odds_do_not_saturate():
    logits = torch.tensor([[30.0, 0.0, 0.0], [0.0, 40.0, 38.0], [0.0, 0.0, 0.0]])
    r = raw_log_odds(logits, 0)[:, 0].numpy()
    assert r[0] == pytest.approx(np.log(2) - 30, abs=1e-5)  # 1 - P(identity) ~ 2e-13, still told apart
    assert r[1] == pytest.approx(np.logaddexp(40, 38), abs=1e-4)  # float32 1 - P(identity) is exactly 1 here
    assert r[2] == pytest.approx(np.log(2), abs=1e-6)


# -- threshold rule -----------------------------------------------------------------------------------

def test_threshold_is_a_float32_quantile_of_the_originals():
    scores = np.r_[np.linspace(0.01, 0.99, 99), np.full(500, 0.999)].astype(np.float32)
    manipulated = np.r_[np.zeros(99, bool), np.ones(500, bool)]
    threshold = operating_threshold(scores, manipulated, 0.05)
    assert threshold == float(np.float32(threshold))  # the served model compares in float32
    assert 0.9 < threshold < 0.99 and np.mean(scores[:99] >= threshold) == pytest.approx(0.05, abs=0.02)
    assert operating_threshold(scores, manipulated, 0.0) > scores[:99].max()  # target 0: above every original
    only = np.array([0.3, 0.9], np.float32)
    assert operating_threshold(only, np.array([False, True]), 0.05) == pytest.approx(0.3)  # one original: itself


# -- through train and export -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    # Two crops per source, every source on one side: a quarter test, a quarter validation.
    split = lambda r: "test" if r // 2 % 4 == 0 else ("validation" if r // 2 % 4 == 1 else "train")  # noqa: E731
    store = synthetic_store(root / "store", "fine", images=80, dim=16, noise=1.5, split=split,
                            source=lambda r: f"source{r // 2}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record = train_probes(store, "fine", ProbeConfig(kind="linear", max_epochs=8), [0], root / "probe",
                              progress=False)
    finally:
        torch.set_num_threads(threads)
    return root / "probe", record


def test_train_fits_the_calibration_on_validation_sources_only(trained):
    path, record = trained
    scores, card = load_scores(path), record["detector"]
    calibration = scores["calibration"]
    assert card["calibration"] == calibration.as_dict()
    assert calibration.fitted_on == {"originals": record["images"]["val"], "edited": 30 * record["images"]["val"],
                                     "sources": record["images"]["val"] // 2}
    val, test = scores["val"], scores["test"]
    np.testing.assert_allclose(val["score"], calibration.probability(val["log_odds"]), atol=2e-6)
    np.testing.assert_allclose(val["raw_score"], 1 / (1 + np.exp(-val["log_odds"].astype(np.float64))), atol=2e-6)
    # Test scores change nothing that was chosen.
    changed = {**scores, "test": {**test, "score": np.zeros_like(test["score"])}}
    assert card_for(changed)["threshold"] == card["threshold"] == operating_threshold(val["score"], val["manipulated"],
                                                                                    TARGET)
    # An increasing map keeps the ranking (up to a pair that float32 rounding ties on either side).
    assert card["raw"]["auc"] == pytest.approx(card["auc"], abs=1e-3)
    assert card["threshold_rule"]["validation_originals"] == record["images"]["val"]
    assert 0 < card["threshold"] < 1 and card["raw"]["threshold"] > card["threshold"]
    lines = format_card(card)  # what the demo prints under the card
    assert lines[4].startswith("score: P(edited | upload), equal prior") and "validation originals" in lines[5]


def test_scores_saved_before_calibration_are_calibrated_when_read(trained, tmp_path):
    path, _ = trained
    with np.load(path / SCORES) as z:
        old = {k: z[k] for k in z.files if not k.endswith(("raw_score", "log_odds", "source", "calibration"))}
    for part in ("val", "test"):
        with np.load(path / SCORES) as z:
            old[f"{part}_score"] = z[f"{part}_raw_score"]  # what scores.npz held: 1 - P(identity)
    np.savez(tmp_path / SCORES, **old)
    scores = load_scores(tmp_path)
    assert scores["calibration"].kind == "platt"
    assert 0 < scores["val"]["score"].min() and scores["val"]["score"].max() < 1
    assert card_for(scores)["threshold"] < 0.999


@pytest.mark.parametrize("kind", ["platt", "isotonic", "none"])
def test_the_onnx_probe_computes_the_calibrated_score_as_torch_does(trained, tmp_path, kind):
    import onnxruntime as ort

    path, _ = trained
    scores = load_scores(path)
    val = scores["val"]
    calibration = (Calibration.from_dict(None) if kind == "none" else
                   fit_calibration(val["log_odds"], val["manipulated"], val["source"], kind=kind))
    threshold = operating_threshold(calibration.probability(val["log_odds"]).astype(np.float32), val["manipulated"])
    probe = read_probe(path)
    exported = export_probes(probe, None, tmp_path / "model.onnx", threshold, calibration=calibration)
    assert exported.max_abs_diff <= 1e-5  # export_probes' own check: every output, torch against ONNX Runtime
    # Embeddings from far inside to far outside the training cloud: scores from ~0 to ~1.
    model = probe.load()
    rng = np.random.default_rng(3)
    x = (model.mean.numpy() + model.std.numpy() * rng.normal(size=(512, probe.dim))
         * rng.choice([0.5, 2, 8], size=(512, 1))).astype(np.float32)
    score, manipulated = ort.InferenceSession(str(tmp_path / "model.onnx")).run(
        ["MANIPULATION_SCORE", "MANIPULATED"], {"EMBEDDING": x})
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
        r = raw_log_odds(logits, probe.classes.index("identity"))[:, 0].double().numpy()
        expected = (1 - torch.softmax(logits, 1)[:, 0]).numpy() if kind == "none" else calibration.probability(r)
    np.testing.assert_allclose(score[:, 0], expected, atol=1e-5)
    assert (0 <= score).all() and (score <= 1).all()
    assert np.ptp(score) > 0.5 if kind != "none" else np.median(score) > 0.9  # raw 1 - P(identity): close to 1
    np.testing.assert_array_equal(manipulated[:, 0], score[:, 0] >= threshold)
