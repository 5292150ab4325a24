"""The mathematics of a membership-inference audit of DP-SGD-trained weights.

Given per-subject attack scores (higher = "more likely a member") for members (trained on)
and non-members (held out by a random split), compute the measured attack figures (AUC,
TPR at 1% FPR, empirical lower bounds on ε) and the largest values an (ε, δ)-DP guarantee
allows, and say which measured figures exceed them.

The scores are derived from private data: this module must never print or log them, and
nothing it returns holds a per-subject value (only counts and aggregate figures).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict
from scipy.stats import beta, norm, rankdata

_FPR_1PCT = 0.01
_ONE_RUN_GRID = tuple(i / 10 for i in range(1, 11))
_THRESHOLD_RANKS = np.array([1, 2, 3, 5, 8, 13, 20, 30, 50, 80, 130, 200, 300, 500, 800, 1300,
                             2000, 3000, 5000, 8000, 13000, 20000, 30000, 50000])


class AuditFigures(BaseModel):
    """Measured attack figures next to what an (ε, δ)-DP guarantee allows. ``fpr_at_1pct_hi``
    is the CP upper bound (level α/2) of the true FPR of the test behind ``tpr_at_1pct_fpr``;
    ``exceeds`` is explained in :func:`audit_figures`."""

    model_config = ConfigDict(frozen=True)

    members: int
    nonmembers: int
    auc: float
    auc_ci: tuple[float, float]
    tpr_at_1pct_fpr: float
    tpr_at_1pct_fpr_ci: tuple[float, float]
    fpr_at_1pct_hi: float
    max_auc_allowed: float
    max_tpr_at_1pct_allowed: float
    epsilon_claimed: float
    delta: float
    epsilon_lower_bound: float
    epsilon_lower_bound_method: Literal["threshold", "one_run"]
    exceeds: list[str]


def _check(epsilon: float = 0.0, delta: float = 0.0, confidence: float = 0.5) -> None:
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be finite and >= 0, got {epsilon}")
    if not 0 <= delta < 1:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _scores(values: np.ndarray, group: str) -> np.ndarray:
    s = np.asarray(values, dtype=float)
    if s.ndim != 1:
        raise ValueError(f"{group} scores must be a 1-D array, got shape {s.shape}")
    if s.size < 2:
        raise ValueError(f"need at least 2 {group}, got {s.size}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{group} scores contain non-finite values (NaN or inf)")
    return s


def max_tpr(fpr: float | np.ndarray, epsilon: float, delta: float) -> float | np.ndarray:
    r"""Largest TPR any membership test can have at false-positive rate ``fpr`` against an
    (ε, δ)-DP mechanism (Kairouz, Oh & Viswanath 2015, the privacy region):

    .. math::
        \mathrm{TPR} \le \min\bigl(1,\; e^{\varepsilon}\,\mathrm{FPR} + \delta,\;
        1 - e^{-\varepsilon}\,(1 - \delta - \mathrm{FPR})\bigr),

    clipped to [0, 1]. The second term bounds the test itself, the third its complement
    (1 − FPR ≤ e^ε (1 − TPR) + δ). At ε = δ = 0 it is the diagonal TPR = FPR.
    """
    _check(epsilon, delta)
    f = np.asarray(fpr, dtype=float)
    if np.any((f < 0) | (f > 1)):
        raise ValueError("fpr must be in [0, 1]")
    e = np.exp(epsilon)
    t = np.minimum(np.minimum(1.0, e * f + delta), 1.0 - (1.0 - delta - f) / e)
    t = np.clip(t, 0.0, 1.0)
    return float(t) if t.ndim == 0 else t


def max_auc(epsilon: float, delta: float) -> float:
    r"""Largest AUC an (ε, δ)-DP mechanism allows: :math:`\int_0^1 \mathrm{max\_tpr}(f)\,df`.

    ``max_tpr`` is piecewise linear; its kinks are where two of the pieces 1,
    :math:`L_1 = e^{\varepsilon} f + \delta`, :math:`L_2 = 1 - e^{-\varepsilon}(1-\delta-f)`
    and 0 meet: :math:`f^* = (1-\delta)/(1+e^{\varepsilon})` (:math:`L_1 = L_2`),
    :math:`(1-\delta)e^{-\varepsilon}` (:math:`L_1 = 1`), :math:`1-\delta` (:math:`L_2 = 1`),
    :math:`1-\delta-e^{\varepsilon}` (:math:`L_2 = 0`). The trapezoid rule on 0, 1 and these
    points is therefore exact. max_auc(0, 0) = 1/2; it increases to 1 with ε and δ.
    """
    _check(epsilon, delta)
    e = np.exp(epsilon)
    kinks = np.array([0.0, 1.0, (1 - delta) / (1 + e), (1 - delta) / e, 1 - delta,
                      1 - delta - e])
    f = np.unique(np.clip(kinks, 0.0, 1.0))
    t = max_tpr(f, epsilon, delta)
    return float(np.sum(np.diff(f) * (t[1:] + t[:-1]) / 2))


def _cp_lower(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided Clopper–Pearson lower bound at level ``alpha`` (0 where k = 0)."""
    k = np.asarray(k, dtype=float)
    return np.where(k > 0, beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)


def _cp_upper(k: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """One-sided Clopper–Pearson upper bound at level ``alpha`` (1 where k = n)."""
    k = np.asarray(k, dtype=float)
    return np.where(k < n, beta.ppf(1 - alpha, k + 1, np.maximum(n - k, 1)), 1.0)


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    r"""Two-sided exact (Clopper–Pearson 1934) interval for a binomial proportion k/n:

    .. math::
        p_{lo} = B^{-1}\!\left(\tfrac{\alpha}{2};\, k,\, n-k+1\right),\quad
        p_{hi} = B^{-1}\!\left(1-\tfrac{\alpha}{2};\, k+1,\, n-k\right),\quad
        \alpha = 1 - \text{confidence},

    with :math:`B^{-1}` the beta quantile; :math:`p_{lo} = 0` at k = 0, :math:`p_{hi} = 1` at k = n.
    """
    _check(confidence=confidence)
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need n >= 1 and 0 <= k <= n, got k={k}, n={n}")
    alpha = (1 - confidence) / 2
    return float(_cp_lower(k, n, alpha)), float(_cp_upper(k, n, alpha))


def epsilon_lower_bound_threshold(member: np.ndarray, nonmember: np.ndarray, delta: float,
                                  confidence: float = 0.95) -> float:
    r"""Empirical ε lower bound from threshold tests (Jagielski, Ullman & Oprea 2020).

    (ε, δ)-DP implies TPR ≤ e^ε FPR + δ and TNR ≤ e^ε FNR + δ for the test "member iff
    score > t", so with one-sided Clopper–Pearson bounds (TPR_lo, FPR_hi, TNR_lo, FNR_hi)

    .. math::
        \varepsilon_t = \max\left(\log\frac{\mathrm{TPR}_{lo} - \delta}{\mathrm{FPR}_{hi}},\;
        \log\frac{\mathrm{TNR}_{lo} - \delta}{\mathrm{FNR}_{hi}}\right).

    Returns :math:`\max(0, \max_t \varepsilon_t)` over a fixed family of thresholds: the
    j-th largest non-member (direct term) and j-th smallest member (complement term) for j in
    ``_THRESHOLD_RANKS``. There FPR (resp. FNR) is a beta order statistic, so CP at j − 1 of n
    is exact, and the other count is binomial given t; a union bound covers the maximum, each
    CP bound at level α/(2·#tests), α = 1 − confidence. (The paper's maximum over every score
    at level α per threshold overstates ε: ~20% of randomised-response runs exceeded the true ε
    at a nominal 5%.) Ties count against the auditor.
    """
    m_s = np.sort(_scores(member, "members"))
    n_s = np.sort(_scores(nonmember, "non-members"))
    _check(delta=delta, confidence=confidence)
    m, n = m_s.size, n_s.size
    j_n = _THRESHOLD_RANKS[_THRESHOLD_RANKS <= n]
    j_m = _THRESHOLD_RANKS[_THRESHOLD_RANKS <= m]
    alpha = (1 - confidence) / (2 * (j_n.size + j_m.size))
    t = n_s[n - j_n]  # direct: guess member iff score > t; j - 1 non-members above
    tpr_lo = _cp_lower(m - np.searchsorted(m_s, t, side="right"), m, alpha)
    fpr_hi = _cp_upper(j_n - 1, n, alpha)
    t = m_s[j_m - 1]  # complement: guess non-member iff score < t; j - 1 members below
    tnr_lo = _cp_lower(np.searchsorted(n_s, t, side="left"), n, alpha)
    fnr_hi = _cp_upper(j_m - 1, m, alpha)
    with np.errstate(divide="ignore"):
        direct = np.log(np.maximum(tpr_lo - delta, 0.0) / fpr_hi)
        complement = np.log(np.maximum(tnr_lo - delta, 0.0) / fnr_hi)
    return float(max(0.0, np.max(direct), np.max(complement)))


def _one_run_correct(scores: np.ndarray, is_member: np.ndarray, k: int) -> int:
    """Correct guesses, top k/2 guessed members, bottom k/2 non-members; ties are broken against
    the auditor (non-members first at the top, members first at the bottom): sound."""
    h = k // 2
    top = np.lexsort((is_member, -scores))[:h]
    bottom = np.lexsort((-is_member, scores))[:h]
    return int(is_member[top].sum() + (1 - is_member[bottom]).sum())


def epsilon_lower_bound_one_run(member: np.ndarray, nonmember: np.ndarray,
                                guesses: int | None = None,
                                confidence: float = 0.95) -> float:
    r"""Empirical ε lower bound from one training run (Steinke, Nasr & Jagielski 2023), pure-ε.

    Rank all subjects by score; guess "member" for the top k/2 and "non-member" for the
    bottom k/2 and count the correct guesses v. Under ε-DP with a random split, v is
    stochastically dominated by :math:`\mathrm{Binomial}(k, p_\varepsilon)`,
    :math:`p_\varepsilon = e^{\varepsilon}/(1+e^{\varepsilon})` (equal numbers of each guess
    keep chance level at 1/2 even when the groups differ in size). The largest ε with
    :math:`P[\mathrm{Bin}(k, p_\varepsilon) \ge v] \le \alpha` is

    .. math::
        \varepsilon = \operatorname{logit}\bigl(B^{-1}(\alpha;\, v,\, k-v+1)\bigr),

    the logit of the one-sided Clopper–Pearson lower bound of v/k, floored at 0.

    ``guesses`` (even, ≤ m + n) fixes k; by default the best of k = 2·⌈q·min(m, n)⌉,
    q = 0.1, …, 1.0, with α = 1 − confidence divided by the number of candidates.
    δ is ignored: the paper's (ε, δ) form adds a tail correction of order δ·m, negligible for
    δ ≤ 1e-5 and m ≤ 10^4. A fixed-size random split stands in for the paper's independent
    fair coins per subject (a standard approximation).
    """
    m_s = _scores(member, "members")
    n_s = _scores(nonmember, "non-members")
    _check(confidence=confidence)
    scores = np.concatenate([m_s, n_s])
    is_member = np.concatenate([np.ones(m_s.size, int), np.zeros(n_s.size, int)])
    if guesses is not None:
        if guesses < 2 or guesses % 2 or guesses > scores.size:
            raise ValueError(f"guesses must be even, >= 2 and <= {scores.size}, got {guesses}")
        candidates = [guesses]
    else:
        small = min(m_s.size, n_s.size)
        candidates = sorted({2 * max(1, int(np.ceil(q * small - 1e-9))) for q in _ONE_RUN_GRID})
    alpha = (1 - confidence) / len(candidates)
    best = 0.0
    for k in candidates:
        v = _one_run_correct(scores, is_member, k)
        p_lo = float(_cp_lower(v, k, alpha))
        if p_lo > 0.5:
            best = max(best, float(np.log(p_lo / (1 - p_lo))))
    return best


def _auc_hanley_mcneil(member: np.ndarray, nonmember: np.ndarray,
                       confidence: float) -> tuple[float, tuple[float, float]]:
    r"""Mann–Whitney AUC (ties count 1/2) with the Hanley & McNeil (1982) standard error

    .. math::
        SE^2 = \frac{A(1-A) + (m-1)(Q_1 - A^2) + (n-1)(Q_2 - A^2)}{m n},\quad
        Q_1 = \frac{A}{2-A},\; Q_2 = \frac{2A^2}{1+A},

    and a normal interval A ± z·SE clipped to [0, 1] (SE = 0 at A ∈ {0, 1})."""
    m, n = member.size, nonmember.size
    ranks = rankdata(np.concatenate([member, nonmember]))
    a = float((ranks[:m].sum() - m * (m + 1) / 2) / (m * n))
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = np.sqrt(max(a * (1 - a) + (m - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a), 0.0)
                 / (m * n))
    z = float(norm.ppf(1 - (1 - confidence) / 2))
    return a, (float(max(0.0, a - z * se)), float(min(1.0, a + z * se)))


def _tp_at_fpr(member: np.ndarray, nonmember: np.ndarray, fpr: float) -> tuple[int, int]:
    """(TP, FP) of the ROC point with the largest TPR among those with FPR ≤ ``fpr``: the
    test "score > t" at t = the (j+1)-th largest non-member score, j = ⌊fpr·n⌋ (ties too)."""
    j = int(np.floor(fpr * nonmember.size + 1e-9))
    t = np.sort(nonmember)[nonmember.size - j - 1]
    return int(np.sum(member > t)), j


def audit_figures(member: np.ndarray, nonmember: np.ndarray, epsilon: float, delta: float,
                  confidence: float = 0.95) -> AuditFigures:
    """All figures of one audit against the claimed (ε, δ), each interval at ``confidence``.

    ``exceeds`` names each figure whose evidence goes beyond the guarantee: "auc" when the
    interval's lower end > max_auc(ε, δ); "tpr_at_1pct_fpr" when its CP lower end >
    max_tpr(``fpr_at_1pct_hi``), the one-sided CP upper bound (level α/2) of the FPR of the
    threshold behind it (its empirical FPR ≤ 1%; the true one may be higher); "epsilon" when
    the larger ε lower bound > ε, both bounds at level α/2 so their maximum holds at level α.
    """
    m_s = _scores(member, "members")
    n_s = _scores(nonmember, "non-members")
    _check(epsilon, delta, confidence)
    auc, auc_ci = _auc_hanley_mcneil(m_s, n_s, confidence)
    tp, fp = _tp_at_fpr(m_s, n_s, _FPR_1PCT)
    tpr_ci = clopper_pearson(tp, m_s.size, confidence)
    fpr_hi = float(_cp_upper(fp, n_s.size, (1 - confidence) / 2))
    allowed_auc = max_auc(epsilon, delta)
    allowed_tpr = float(max_tpr(_FPR_1PCT, epsilon, delta))
    each = 1 - (1 - confidence) / 2
    eps_thr = epsilon_lower_bound_threshold(m_s, n_s, delta, each)
    eps_one = epsilon_lower_bound_one_run(m_s, n_s, confidence=each)
    method: Literal["threshold", "one_run"] = "threshold" if eps_thr >= eps_one else "one_run"
    eps_lb = max(eps_thr, eps_one)
    checks = (("auc", auc_ci[0] > allowed_auc),
              ("tpr_at_1pct_fpr", tpr_ci[0] > max_tpr(fpr_hi, epsilon, delta)),
              ("epsilon", eps_lb > epsilon))
    return AuditFigures(
        members=m_s.size, nonmembers=n_s.size, auc=auc, auc_ci=auc_ci,
        tpr_at_1pct_fpr=tp / m_s.size, tpr_at_1pct_fpr_ci=tpr_ci, fpr_at_1pct_hi=fpr_hi,
        max_auc_allowed=allowed_auc, max_tpr_at_1pct_allowed=allowed_tpr,
        epsilon_claimed=float(epsilon), delta=float(delta), epsilon_lower_bound=eps_lb,
        epsilon_lower_bound_method=method, exceeds=[name for name, over in checks if over])
