"""ε is checked against Opacus's own RDP analysis, never against our wrapper."""

import pytest

from policies.contract import privacy
from tests.support.reference import reference_epsilon


@pytest.mark.parametrize("sigma,q,steps,delta", [
    (1.0, 0.1, 30, 1e-5), (0.8, 0.05, 200, 1e-6), (2.0, 0.3, 12, 1e-5)])
def test_epsilon_matches_opacus_rdp(sigma, q, steps, delta):
    ours = privacy.epsilon_spent([(sigma, q, steps)], delta)
    assert ours == pytest.approx(reference_epsilon([(sigma, q, steps)], delta), rel=1e-9)


def test_composition_over_rounds_matches_opacus():
    history = [(1.1, 0.1, 24)] * 3 + [(0.9, 0.12, 20)]
    ours = privacy.epsilon_spent(history, 1e-5)
    assert ours == pytest.approx(reference_epsilon(history, 1e-5), rel=1e-9)
    # composition is not addition of per-round ε
    assert ours < sum(privacy.epsilon_spent([h], 1e-5) for h in history)


def test_derived_noise_meets_the_target_over_all_rounds():
    shape = privacy.run_shape(n=400, batch_size=48, local_epochs=3)
    assert shape.sample_rate == pytest.approx(0.12)
    assert shape.steps == 3 * round(400 / 48)
    sigma = privacy.derive_noise_multiplier(8.0, 1e-5, shape, rounds=4)
    eps = reference_epsilon([(sigma, shape.sample_rate, shape.steps)] * 4, 1e-5)
    assert eps <= 8.0
    assert eps > 7.5  # and not wastefully far below it


def test_no_history_spends_nothing():
    assert privacy.epsilon_spent([], 1e-5) == 0.0


def test_mixed_history_matches_opacus_accountant_object_with_the_cache_warm():
    """Runs of several plans (different σ, q, steps; some (q, σ) repeated), asked twice."""
    from opacus.accountants import RDPAccountant

    history = [(1.1, 0.1, 30), (0.9, 0.25, 8), (1.1, 0.1, 30), (2.5, 0.5, 4), (0.9, 0.25, 3)]
    acc = RDPAccountant()
    acc.history = list(history)
    for _ in range(2):
        assert privacy.epsilon_spent(history, 1e-5) == pytest.approx(
            acc.get_epsilon(delta=1e-5), rel=1e-12)
    assert privacy.epsilon_spent(history[:2], 1e-6) == pytest.approx(
        reference_epsilon(history[:2], 1e-6), rel=1e-12)
