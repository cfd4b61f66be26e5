"""The match probe's edited score beyond the probe (trainer/edit_evidence.py): the distances, the
combination's choice on held-out sources, and the torch modules the ONNX graph is exported from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equiprobe.trainer.calibration import Calibration, raw_log_odds
from equiprobe.trainer.edit_evidence import (PROBE_ONLY, WITH_DISTANCES, CombinedLogOdds, Distances, EditEvidence,
                                             fit_evidence, input_names)


def test_distances_are_the_logged_cosine_and_scaled_rms_distances():
    rng = np.random.default_rng(0)
    dim, f = 6, 4
    q, o = rng.normal(size=(5, dim + f)).astype(np.float32), rng.normal(size=(5, dim + f)).astype(np.float32)
    scale = np.array([1.0, 2.0, 0.5, 4.0], np.float32)
    got = Distances(dim, torch.from_numpy(scale))(torch.from_numpy(q), torch.from_numpy(o)).numpy()
    cosine = (q[:, :dim] * o[:, :dim]).sum(1) / np.linalg.norm(q[:, :dim], axis=1) / np.linalg.norm(o[:, :dim], axis=1)
    rms = np.sqrt((((q[:, dim:] - o[:, dim:]) / scale) ** 2).mean(1))
    np.testing.assert_allclose(got[:, 0], np.log(1 - cosine + 1e-6), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[:, 1], np.log(rms + 1e-6), rtol=1e-4, atol=1e-5)
    same = Distances(dim, torch.ones(0))(torch.from_numpy(q[:, :dim]), torch.from_numpy(q[:, :dim])).numpy()
    assert same.shape == (5, 1) and (same[:, 0] < np.log(1e-5)).all()  # a re-upload of the same bytes: no distance


def _evidence(seed: int, distances_informative: bool, sources: int = 60, per_source: int = 20):
    """Validation pairs of `sources` sources: half of each source's edits are kinds the probe knows
    (high r), half kinds it never saw (r like an original's); the distance grows with every edit
    where `distances_informative`, and is noise otherwise."""
    rng = np.random.default_rng(seed)
    n = sources * per_source
    groups = np.repeat(np.arange(sources), per_source)
    edited = np.tile(np.arange(per_source) % 4 != 0, sources)  # a quarter originals
    known = edited & (np.tile(np.arange(per_source), sources) % 2 == 0)
    r = rng.normal(-3, 1, n) + 6 * known
    d = rng.normal(0, 1, n) + (2.5 * edited if distances_informative else 0)
    return np.c_[r, d, rng.normal(0, 1, n)], edited, groups


def test_fit_evidence_takes_distances_only_where_they_rank_held_out_sources_better():
    x, edited, groups = _evidence(0, distances_informative=True)
    combination = fit_evidence(x, edited, groups, features_dim=8)
    assert combination.chosen == WITH_DISTANCES and combination.inputs == input_names(8)
    cv = combination.cross_validated_auc
    assert cv[WITH_DISTANCES] > cv[PROBE_ONLY] + 0.05 and cv["folds"] == 5
    assert combination.weights[0] > 0 and combination.weights[1] > 0  # both kinds of evidence count
    x, edited, groups = _evidence(1, distances_informative=False)
    alone = fit_evidence(x, edited, groups, features_dim=8)
    assert alone.chosen == PROBE_ONLY and alone.weights == [1.0, 0.0, 0.0] and alone.bias == 0.0
    np.testing.assert_array_equal(alone.combine(x), x[:, 0])


def test_fit_evidence_refuses_the_wrong_width_and_keeps_log_odds_without_sources():
    x, edited, groups = _evidence(0, True)
    with pytest.raises(ValueError, match="expected 2"):
        fit_evidence(x, edited, groups, features_dim=0)
    one_source = fit_evidence(x, edited, np.zeros(len(x)), features_dim=8)
    assert one_source.chosen == PROBE_ONLY


def test_combined_log_odds_module_equals_the_fitted_combination_and_round_trips():
    rng = np.random.default_rng(2)
    dim, f, classes, identity = 5, 3, 6, 0
    combination = EditEvidence([0.5, 0.7, 0.3], -1.25, WITH_DISTANCES, input_names(f))
    again = EditEvidence.from_dict(combination.as_dict(), input_names(f))
    assert again == combination
    assert EditEvidence.from_dict(None, input_names(f)).chosen == PROBE_ONLY  # a probe from before distances
    distances = Distances(dim, torch.from_numpy(rng.uniform(0.5, 2, f).astype(np.float32)))
    module = CombinedLogOdds(combination, identity, distances)
    logits = torch.from_numpy(rng.normal(size=(7, classes)).astype(np.float32))
    q = torch.from_numpy(rng.normal(size=(7, dim + f)).astype(np.float32))
    o = torch.from_numpy(rng.normal(size=(7, dim + f)).astype(np.float32))
    with torch.no_grad():
        evidence = torch.cat([raw_log_odds(logits, identity), distances(q, o)], 1).double().numpy()
        np.testing.assert_allclose(module(logits, q, o)[:, 0].numpy(), combination.combine(evidence), rtol=1e-5,
                                   atol=1e-5)


@pytest.mark.parametrize("calibration", [Calibration("platt", a=0.8, b=-0.3),
                                         Calibration("isotonic", knots_r=[-2.0, 0.0, 3.0], knots_p=[0.1, 0.4, 0.95]),
                                         Calibration("none", prior=None)])
def test_calibration_of_a_combined_log_odds_equals_its_probability(calibration):
    r = np.linspace(-6, 6, 41)
    with torch.no_grad():
        served = calibration.module(None)(torch.tensor(r[:, None], dtype=torch.float32))[:, 0].numpy()
    expected = 1 / (1 + np.exp(-r)) if calibration.kind == "none" else calibration.probability(r)
    np.testing.assert_allclose(served, expected, atol=1e-6)
