"""Design variants as config fields: Phase 1 diversity terms, stop rules, the activation."""

import typing

import numpy as np
import pytest
import torch

from cvfp.config import Diversity, ModelConfig, Phase1Config
from cvfp.models import CVFPModel
from cvfp.models.recurrence import sequential, sequential_reference
from cvfp.training.diversity import DIVERSITY
from cvfp.training.phase1 import run_phase1, should_stop

X = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [2.0, 0.0, 1.0], [1.0, 1.0, 3.0]])  # B = 4, C = 3


def test_the_registry_is_the_config_choice():
    assert set(DIVERSITY) == set(typing.get_args(Diversity))
    with pytest.raises(ValueError, match="diversity"):
        Phase1Config.from_dict({"diversity": "infonce"})


def test_each_diversity_term_against_a_hand_computation():
    x = torch.tensor(X)
    mu = X.mean(axis=0)
    frob = np.sqrt(((X - mu) ** 2).sum())
    assert DIVERSITY["seed"](x).item() == pytest.approx(-frob / 4)
    assert DIVERSITY["oacd"](x).item() == pytest.approx(-frob / 4 + 0.1 * (mu**2).sum())
    cov = (X - mu).T @ (X - mu) / 3
    var_term = np.maximum(0, 1 - np.sqrt(np.diag(cov) + 1e-4)).mean()
    off = (cov**2).sum() - (np.diag(cov) ** 2).sum()
    assert DIVERSITY["vicreg"](x).item() == pytest.approx(var_term + 0.04 * off / 3)
    assert DIVERSITY["nuclear"](x).item() == pytest.approx(-np.linalg.svd(X - mu, compute_uv=False).sum() / 4)
    s = np.linalg.svd(X, compute_uv=False)
    p = s / s.sum()
    assert DIVERSITY["log-rank"](x).item() == pytest.approx((p * np.log(p)).sum())
    # A collapsed batch (every row equal) is the least diverse for the seed's term.
    assert DIVERSITY["seed"](torch.ones(4, 3)).item() == 0.0 > DIVERSITY["seed"](x).item()


def small_model(activation="relu"):
    cfg = ModelConfig(num_layers=2, context_dim=8, embed_dim=6, vocab_size=30, activation=activation)
    return CVFPModel(cfg, torch.randn(30, 6, generator=torch.Generator().manual_seed(0)), seed=1)


@pytest.mark.parametrize("name", sorted(DIVERSITY))
def test_phase1_runs_with_every_diversity_term_and_w_1_is_diversity_only(name):
    ids = torch.randint(0, 30, (60,), generator=torch.Generator().manual_seed(2))
    cfg = Phase1Config(max_iterations=3, min_iterations=100, batch_tokens=32, dist_reg_weight=1.0, diversity=name)
    result = run_phase1(small_model(), ids, cfg, torch.Generator().manual_seed(0), progress=False)
    for record in result.history:  # w = 1: the loss is the diversity term alone, whatever the fixed-point error
        assert record["loss"] == pytest.approx(record["diversity_loss"], rel=1e-6)
        assert record["fixed_point_loss"] > 0
    assert torch.isfinite(result.contexts).all()


def test_stop_rules():
    rate = Phase1Config(min_iterations=5, stop_rate=0.99)
    assert not should_stop(3, 1.0, rate) and should_stop(4, 0.99, rate) and not should_stop(9, 0.98, rate)
    improvement = Phase1Config(min_iterations=5, stop_rule="improvement", min_improvement=0.01)
    assert not should_stop(3, 0.5, improvement, 0.5)  # never before min_iterations
    assert should_stop(4, 0.505, improvement, 0.5)  # +0.5 point < 1 point
    assert not should_stop(4, 0.52, improvement, 0.5)
    assert not should_stop(4, 0.5, improvement, None)  # the first iteration has nothing to compare with
    fixed = Phase1Config(min_iterations=0, stop_rule="fixed")
    assert not any(should_stop(i, 1.0, fixed, 0.0) for i in range(50))


def test_phase1_runs_exactly_max_iterations_under_the_fixed_rule():
    ids = torch.randint(0, 30, (60,), generator=torch.Generator().manual_seed(2))
    cfg = Phase1Config(max_iterations=6, min_iterations=1, stop_rate=0.0, stop_rule="fixed", batch_tokens=32)
    result = run_phase1(small_model(), ids, cfg, torch.Generator().manual_seed(0), progress=False)
    assert result.iterations == 6 and not result.converged
    early = run_phase1(small_model(), ids, cfg.replace(stop_rule="rate"), torch.Generator().manual_seed(0),
                       progress=False)  # fmt: skip
    assert early.iterations == 2 and early.converged  # rate >= 0 at the first allowed stop


def test_gelu_blocks_recur_like_the_plain_loop_and_differ_from_relu():
    ids = torch.randint(0, 30, (40,), generator=torch.Generator().manual_seed(3))
    gelu, relu = small_model("gelu"), small_model("relu")
    assert sum(p.numel() for p in gelu.parameters()) == sum(p.numel() for p in relu.parameters())
    truth = sequential_reference(gelu, ids)
    torch.testing.assert_close(torch.cat([f for _, f in sequential(gelu, ids, chunk=16)]), truth, atol=1e-5, rtol=1e-5)
    assert (truth - sequential_reference(relu, ids)).abs().max() > 1e-3  # the same weights, another nonlinearity
