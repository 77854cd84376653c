import math

import numpy as np
import pytest

from cvfp.fit import fit_power_law, fit_saturating


def test_exact_power_law_is_recovered():
    tokens = [50_000, 100_000, 200_000, 500_000]
    ppl = [3000 * t**-0.4 for t in tokens]
    fit = fit_power_law(tokens, ppl)
    assert fit["alpha"] == pytest.approx(-0.4)
    assert fit["A"] == pytest.approx(3000)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit["reduction_per_doubling"] == pytest.approx(1 - 2**-0.4)
    assert fit["predictions"][0]["ppl"] == pytest.approx(3000 * 1e6**-0.4)


def test_noisy_power_law_ci_covers_truth():
    rng = np.random.default_rng(0)
    tokens = np.geomspace(1e4, 1e6, 8)
    ppl = 5000 * tokens**-0.3 * np.exp(rng.normal(0, 0.02, size=8))
    fit = fit_power_law(tokens, ppl)
    lo, hi = fit["alpha_ci95"]
    assert lo < -0.3 < hi and hi - lo < 0.1
    band = fit["predictions"][0]["ci95"]
    assert band[0] < fit["predictions"][0]["ppl"] < band[1]


def test_seed_table_fit_gives_computed_a_not_the_documents():
    # SPEC 7: the seed's own four points give alpha -0.403 and A ~ 66,800 (not 195,000).
    fit = fit_power_law([56602, 110516, 216119, 529173], [787.3, 648.8, 482.4, 324.5])
    assert fit["alpha"] == pytest.approx(-0.403, abs=0.001)
    assert fit["r2"] == pytest.approx(0.992, abs=0.001)
    assert 60_000 < fit["A"] < 70_000
    assert [round(p["ppl"]) for p in fit["predictions"]] == pytest.approx([257, 134, 102], abs=1)


def test_saturating_fit_recovers_irreducible_loss():
    tokens = np.geomspace(1e4, 1e7, 6)
    loss = 2.0 + 40.0 * tokens**-0.35
    sat = fit_saturating(tokens, loss)
    assert sat["E"] == pytest.approx(2.0, abs=1e-3) and sat["beta"] == pytest.approx(0.35, abs=1e-3)
    assert "error" in fit_saturating(tokens[:3], loss[:3])


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError):
        fit_power_law([1000], [10.0])
    with pytest.raises(ValueError):
        fit_power_law([1000, 2000], [10.0, math.inf])
