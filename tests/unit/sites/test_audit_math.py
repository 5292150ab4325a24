"""The membership-inference audit's mathematics: the (ε, δ) privacy region, exact binomial
intervals, AUC and the empirical ε lower bounds (soundness checked by simulation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import trapezoid
from scipy.optimize import brentq
from scipy.stats import binomtest, norm
from sklearn.metrics import roc_auc_score

from sites.review.audit_math import (
    AuditFigures,
    audit_figures,
    clopper_pearson,
    epsilon_lower_bound_one_run,
    epsilon_lower_bound_threshold,
    max_auc,
    max_tpr,
)

DELTA = 1e-5
PRIVACY = [(0.0, 0.0), (0.5, 0.0), (1.0, 1e-5), (3.0, 1e-3), (8.0, 1e-5)]


def gaussian_mu(epsilon: float, delta: float) -> float:
    """μ of the μ-GDP Gaussian mechanism that is exactly (ε, δ)-DP:
    δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2)."""

    def gap(mu: float) -> float:
        return norm.cdf(-epsilon / mu + mu / 2) - math.exp(epsilon) * norm.cdf(
            -epsilon / mu - mu / 2) - delta

    return brentq(gap, 1e-3, 50.0)


def gaussian_scores(mu: float, seed: int, m: int = 500, n: int = 500):
    rng = np.random.default_rng(seed)
    return rng.normal(mu, 1.0, m), rng.normal(0.0, 1.0, n)


# -- the privacy region ------------------------------------------------------------------


def test_max_tpr_is_the_diagonal_without_privacy_loss():
    f = np.linspace(0, 1, 101)
    np.testing.assert_allclose(max_tpr(f, 0.0, 0.0), f, atol=1e-15)


@pytest.mark.parametrize(("epsilon", "delta"), PRIVACY)
def test_max_tpr_is_a_monotone_curve_above_the_diagonal(epsilon, delta):
    f = np.linspace(0, 1, 2001)
    t = max_tpr(f, epsilon, delta)
    assert np.all(t >= f - 1e-12)
    assert np.all(t <= 1.0)
    assert np.all(np.diff(t) >= -1e-12)
    assert isinstance(max_tpr(0.3, epsilon, delta), float)


@pytest.mark.parametrize(("epsilon", "delta"), [(1.0, 0.0), (2.0, 1e-3)])
def test_max_tpr_kink(epsilon, delta):
    e = math.exp(epsilon)
    kink = (1 - delta) / (1 + e)
    assert max_tpr(kink, epsilon, delta) == pytest.approx((e + delta) / (1 + e), abs=1e-12)
    left, right = kink / 2, (kink + 1) / 2
    assert max_tpr(left, epsilon, delta) == pytest.approx(e * left + delta, abs=1e-12)
    assert max_tpr(right, epsilon, delta) == pytest.approx(
        1 - (1 - delta - right) / e, abs=1e-12)
    h = 1e-6
    slope_left = (max_tpr(kink, epsilon, delta) - max_tpr(kink - h, epsilon, delta)) / h
    slope_right = (max_tpr(kink + h, epsilon, delta) - max_tpr(kink, epsilon, delta)) / h
    assert slope_left == pytest.approx(e, rel=1e-5)
    assert slope_right == pytest.approx(1 / e, rel=1e-5)


def test_max_tpr_at_the_ends():
    assert max_tpr(0.0, 1.0, 1e-3) == pytest.approx(1e-3)
    assert max_tpr(1.0, 1.0, 1e-3) == 1.0
    assert max_tpr(0.01, 8.0, 1e-5) == pytest.approx(1 - math.exp(-8) * (1 - 1e-5 - 0.01))


def test_max_auc():
    assert max_auc(0.0, 0.0) == 0.5
    aucs = [max_auc(eps, DELTA) for eps in np.linspace(0, 10, 41)]
    assert np.all(np.diff(aucs) > 0)
    assert 0.5 < aucs[0] < aucs[-1] < 1.0
    # the two lines' area for ε = 1, δ = 0: kink at (1/(1+e), e/(1+e))
    e = math.e
    fk, tk = 1 / (1 + e), e / (1 + e)
    assert max_auc(1.0, 0.0) == pytest.approx(fk * tk / 2 + (1 - fk) * (tk + 1) / 2, abs=1e-12)


@pytest.mark.parametrize(("epsilon", "delta"), [(0.3, 0.0), (1.0, 0.0), (4.0, 0.0),
                                                (1.0, 1e-2), (0.1, 0.3)])
def test_max_auc_is_the_integral_of_max_tpr(epsilon, delta):
    f = np.linspace(0, 1, 2_000_001)
    dense = trapezoid(max_tpr(f, epsilon, delta), f)
    assert max_auc(epsilon, delta) == pytest.approx(dense, abs=1e-6)


def test_privacy_parameters_are_checked():
    with pytest.raises(ValueError, match="epsilon"):
        max_tpr(0.1, -1.0, 0.0)
    with pytest.raises(ValueError, match="delta"):
        max_auc(1.0, 1.0)
    with pytest.raises(ValueError, match="fpr"):
        max_tpr(1.5, 1.0, 0.0)


# -- exact binomial intervals ------------------------------------------------------------


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (1, 500),
                                      (250, 500), (499, 500), (500, 500)])
@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_clopper_pearson_matches_scipy(k, n, confidence):
    ref = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    lo, hi = clopper_pearson(k, n, confidence)
    assert lo == pytest.approx(ref.low, abs=1e-12)
    assert hi == pytest.approx(ref.high, abs=1e-12)
    if k == 0:
        assert lo == 0.0
    if k == n:
        assert hi == 1.0


def test_clopper_pearson_rejects_impossible_counts():
    with pytest.raises(ValueError):
        clopper_pearson(5, 4)
    with pytest.raises(ValueError):
        clopper_pearson(0, 0)
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson(1, 4, confidence=1.0)


# -- measured figures --------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "m", "n"), [(0, 300, 300), (1, 50, 700), (2, 900, 40)])
def test_auc_matches_sklearn_with_ties(seed, m, n):
    rng = np.random.default_rng(seed)
    member = np.round(rng.normal(0.7, 1.0, m), 1)  # rounding makes many ties
    nonmember = np.round(rng.normal(0.0, 1.0, n), 1)
    y = np.r_[np.ones(m), np.zeros(n)]
    expected = roc_auc_score(y, np.r_[member, nonmember])
    figures = audit_figures(member, nonmember, 1.0, DELTA)
    assert figures.auc == pytest.approx(expected, abs=1e-12)
    assert figures.auc_ci[0] < figures.auc < figures.auc_ci[1]


def test_auc_interval_is_hanley_mcneil():
    # identical groups: A = 1/2, Q1 = 1/3, Q2 = 1/3, SE² = (1/4 + (m + n − 2)/12) / (m n)
    scores = np.arange(50, dtype=float)
    figures = audit_figures(scores, scores.copy(), 1.0, DELTA)
    se = math.sqrt((0.25 + 98 / 12) / 2500)
    assert figures.auc == 0.5
    assert figures.auc_ci[0] == pytest.approx(0.5 - 1.959963984540054 * se, abs=1e-12)
    assert figures.auc_ci[1] == pytest.approx(0.5 + 1.959963984540054 * se, abs=1e-12)


def test_tpr_at_1pct_fpr_on_a_constructed_case():
    nonmember = np.arange(200, dtype=float)  # 1% of 200 = 2 false positives allowed
    member = np.r_[np.full(10, 500.0), np.full(3, 199.0), np.full(2, 197.5), np.full(85, -1.0)]
    figures = audit_figures(member, nonmember, 1.0, DELTA)
    assert figures.tpr_at_1pct_fpr == pytest.approx(0.15)  # threshold 197.5: 15 TP, 2 FP
    assert figures.tpr_at_1pct_fpr_ci == pytest.approx(clopper_pearson(15, 100))


@pytest.mark.parametrize("seed", [3, 4])
def test_tpr_at_1pct_fpr_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    member = np.round(rng.normal(1.5, 1.0, 400), 2)
    nonmember = np.round(rng.normal(0.0, 1.0, 600), 2)
    best = 0
    for t in np.unique(np.r_[member, nonmember]):
        if np.sum(nonmember >= t) <= 6:
            best = max(best, int(np.sum(member >= t)))
    assert audit_figures(member, nonmember, 1.0, DELTA).tpr_at_1pct_fpr == best / 400


# -- ε lower bounds: exact values ----------------------------------------------------------


def test_threshold_bound_on_separated_groups():
    member, nonmember = np.arange(500.0) + 1000, np.arange(500.0)
    # best test: above the largest non-member (all 500 members, no non-member); the family has
    # 14 ranks ≤ 500 per side, each of its 2·28 CP bounds at 0.05 / 56
    a = 0.05 / 56
    tpr_lo, fpr_hi = a ** (1 / 500), 1 - a ** (1 / 500)
    expected = math.log((tpr_lo - DELTA) / fpr_hi)
    assert epsilon_lower_bound_threshold(member, nonmember, DELTA) == pytest.approx(expected)


def test_one_run_bound_on_separated_groups():
    member, nonmember = np.arange(500.0) + 1000, np.arange(500.0)

    def logit(p: float) -> float:
        return math.log(p / (1 - p))

    # default: best of 10 candidate k, here k = 1000 with all guesses right, at 0.05 / 10
    assert epsilon_lower_bound_one_run(member, nonmember) == pytest.approx(
        logit((0.005) ** (1 / 1000)))
    assert epsilon_lower_bound_one_run(member, nonmember, guesses=200) == pytest.approx(
        logit(0.05 ** (1 / 200)))


def test_ties_do_not_count_as_evidence():
    scores = np.repeat(np.arange(10.0), 30)
    member, nonmember = scores, scores.copy()
    assert epsilon_lower_bound_threshold(member, nonmember, DELTA) == 0.0
    assert epsilon_lower_bound_one_run(member, nonmember) == 0.0
    same = np.zeros(300)
    assert epsilon_lower_bound_one_run(same, same.copy(), guesses=600) == 0.0
    figures = audit_figures(same, same.copy(), 0.5, DELTA)
    assert figures.auc == 0.5
    assert figures.exceeds == []


# -- ε lower bounds: soundness and power by simulation --------------------------------------


@pytest.mark.parametrize("epsilon", [1.0, 4.0, 8.0])
def test_bounds_are_sound_on_the_gaussian_mechanism(epsilon):
    mu = gaussian_mu(epsilon, DELTA)
    for seed in range(20):
        member, nonmember = gaussian_scores(mu, seed)
        assert epsilon_lower_bound_threshold(member, nonmember, DELTA) <= epsilon
        assert epsilon_lower_bound_one_run(member, nonmember) <= epsilon
        figures = audit_figures(member, nonmember, epsilon, DELTA)
        assert figures.epsilon_lower_bound <= epsilon
        assert figures.exceeds == []


def test_bounds_are_sound_on_a_tight_mechanism():
    """Randomised response is ε-DP with equality along the whole privacy region (TPR at 1% FPR
    and AUC at their maxima too), so a bound that ignores the choice among many thresholds,
    or an FPR taken at face value, is over in far more than 5% of runs."""
    epsilon = 1.0
    p = math.exp(epsilon) / (1 + math.exp(epsilon))
    over = {"threshold": 0, "one_run": 0, "auc": 0, "tpr_at_1pct_fpr": 0, "epsilon": 0}
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        # jitter breaks ties independently of membership (post-processing: still ε-DP)
        member = (rng.random(500) < p) + rng.random(500) * 1e-3
        nonmember = (rng.random(500) < 1 - p) + rng.random(500) * 1e-3
        over["threshold"] += epsilon_lower_bound_threshold(member, nonmember, 0.0) > epsilon
        over["one_run"] += epsilon_lower_bound_one_run(member, nonmember) > epsilon
        for name in audit_figures(member, nonmember, epsilon, 0.0).exceeds:
            over[name] += 1
    assert max(over.values()) <= 3, over  # nominal ≤ 5%: at most 2 of 40 expected


def test_bounds_detect_a_leak():
    mu = gaussian_mu(8.0, DELTA)
    member, nonmember = gaussian_scores(mu, seed=7)
    assert epsilon_lower_bound_threshold(member, nonmember, DELTA) > 1.5
    assert epsilon_lower_bound_one_run(member, nonmember) > 1.5
    figures = audit_figures(member, nonmember, 1.0, DELTA)
    assert "epsilon" in figures.exceeds


def test_a_broken_mechanism_exceeds_its_claim():
    member, nonmember = gaussian_scores(8.0, seed=11)
    figures = audit_figures(member, nonmember, 1.0, DELTA)
    assert isinstance(figures, AuditFigures)
    assert {"epsilon", "auc", "tpr_at_1pct_fpr"} <= set(figures.exceeds)
    assert figures.epsilon_lower_bound > 4
    assert figures.members == figures.nonmembers == 500
    assert figures.max_auc_allowed == pytest.approx(max_auc(1.0, DELTA))
    assert figures.max_tpr_at_1pct_allowed == pytest.approx(max_tpr(0.01, 1.0, DELTA))
    assert figures.epsilon_lower_bound_method in {"threshold", "one_run"}
    assert AuditFigures.model_validate_json(figures.model_dump_json()) == figures


# -- bad input ----------------------------------------------------------------------------


def _message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


@pytest.mark.parametrize("call", [
    lambda m, n: audit_figures(m, n, 1.0, DELTA),
    lambda m, n: epsilon_lower_bound_threshold(m, n, DELTA),
    lambda m, n: epsilon_lower_bound_one_run(m, n),
])
def test_bad_input_names_the_group(call):
    good = np.arange(10.0)
    with pytest.raises(ValueError) as excinfo:
        call(np.array([1.0]), good)
    assert "members" in _message(excinfo) and "non-members" not in _message(excinfo)
    with pytest.raises(ValueError, match="non-members"):
        call(good, np.array([0.5]))
    with pytest.raises(ValueError) as excinfo:
        call(np.r_[good, np.inf], good)
    assert "non-finite" in _message(excinfo) and "non-members" not in _message(excinfo)
    with pytest.raises(ValueError, match="non-members.*non-finite"):
        call(good, np.r_[good, np.nan])
    with pytest.raises(ValueError, match="non-members.*1-D"):
        call(good, good.reshape(2, 5))


def test_guesses_must_be_even_and_fit():
    good = np.arange(10.0)
    for guesses in (0, 3, 22):
        with pytest.raises(ValueError, match="guesses"):
            epsilon_lower_bound_one_run(good, good, guesses=guesses)
