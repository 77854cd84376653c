"""Design variants as config fields: Phase 1 diversity terms, stop rules, the activation."""

import typing

import numpy as np
import pytest
import torch

from cvfp.config import Diversity, ModelConfig, Phase1Config
from cvfp.models import build_model
from cvfp.models.recurrence import sequential, sequential_reference
from cvfp.training.diversity import DIVERSITY
from cvfp.training.phase1 import run_phase1, should_stop
from cvfp.training.point import RunOptions

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
    return build_model(cfg, torch.randn(30, 6, generator=torch.Generator().manual_seed(0)), seed=1)


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


def mode_model(mode, lc=2, lt=2, seed=1):
    cfg = ModelConfig(context_dim=8, embed_dim=6, vocab_size=30, context_layers=lc, token_layers=lt, context_mode=mode)
    model = build_model(cfg, torch.randn(30, 6, generator=torch.Generator().manual_seed(0)), seed=seed)
    with torch.no_grad():
        model.head.weight.normal_()  # a zero head would hide every dependence
    return model


def test_unequal_depths_give_the_expected_parameter_counts():
    from cvfp.models.model import token_reads

    # C = 8, kE = E = 6. A ContextLayer: fc (8 + 6) x 8 + 8, LayerNorm 2 x 8 = 136.
    # A TokenLayer reading one 8-wide context: fc (8 + 6) x 6 + 6, LayerNorm 2 x 6 = 102.
    for lc, lt in ((1, 3), (3, 1), (2, 2), (1, 1)):
        counts = mode_model("e", lc, lt).parameter_counts()
        assert (counts["context_block"], counts["token_block"]) == (136 * lc, 102 * lt), (lc, lt)
    assert token_reads(mode_model("e", 1, 3).cfg) == [(1,), (1,), (1,)]
    assert token_reads(mode_model("e", 3, 1).cfg) == [(3,)]  # the last TokenLayer always reads c_L
    assert token_reads(mode_model("e", 4, 2).cfg) == [(2,), (4,)]
    assert token_reads(mode_model("final", 3, 2).cfg) == [(3,), (3,)]
    assert token_reads(mode_model("split", 2, 3).cfg) == [(0,), (), (2,)]
    assert token_reads(mode_model("split", 2, 1).cfg) == [(0, 2)]
    # split's middle layer reads nothing: fc 6 x 6 + 6, LayerNorm 12 = 54.
    assert mode_model("split", 2, 3).parameter_counts()["token_block"] == 102 + 54 + 102


@pytest.mark.parametrize("mode,reads_c1,reads_previous", [("e", True, False), ("final", False, False),
                                                          ("split", False, True)])  # fmt: skip
def test_which_contexts_each_mode_reads_by_gradient(mode, reads_c1, reads_previous):
    model = mode_model(mode)
    g = torch.Generator().manual_seed(4)
    c1, c2, previous = (torch.randn(5, 8, generator=g, requires_grad=True) for _ in range(3))
    x = torch.randn(5, 6, generator=g)
    model.token_logits([c1, c2], x, previous).pow(2).sum().backward()

    def read(grad):  # None: not in the graph at all
        return grad is not None and bool(grad.abs().max() > 0)

    assert read(c1.grad) == reads_c1  # "final" and "split" never read the intermediate c_1
    assert read(previous.grad) == reads_previous
    assert read(c2.grad)  # every mode reads the final context


@pytest.mark.parametrize("mode,lc,lt", [("e", 2, 2), ("e", 1, 3), ("final", 2, 2), ("split", 2, 3), ("split", 2, 1)])
def test_every_mode_is_causal_and_cached_scoring_equals_stepping(mode, lc, lt):
    from cvfp.training.caches import sequential_cache
    from cvfp.training.phase2 import _batch_features

    model = mode_model(mode, lc, lt)
    ids = torch.randint(0, 30, (25,), generator=torch.Generator().manual_seed(5))

    def logits(stream):
        with torch.no_grad():
            cache = sequential_cache(model, stream)
            return torch.cat([torch.nn.functional.linear(_batch_features(model, cache, stream, s, min(24, s + 7)),
                                                         *model.head_weights()) for s in range(0, 24, 7)])  # fmt: skip

    base = logits(ids)
    changed = ids.clone()
    changed[15] = (changed[15] + 1) % 30
    after = logits(changed)
    assert torch.equal(base[:15], after[:15])  # rows 0..14 predict tokens 1..15 from tokens <= 14
    assert not torch.allclose(base[15:], after[15:])
    with torch.no_grad():  # the streaming step (previous = the context carried in) gives the same logits
        c, stepped = torch.zeros(1, 8), []
        for i in range(24):
            c, out = model.step(c, model.step_inputs(ids, i, i + 1))
            stepped.append(out)
    torch.testing.assert_close(torch.cat(stepped), base, atol=1e-4, rtol=1e-4)


def test_describe_prints_each_modes_counts(capsys):
    from cvfp.cli import main

    argv = ["describe", "--layers", "2", "--context-dim", "8", "--embeddings", "random-6"]
    assert main([*argv, "--set", "model.context_mode=split", "--set", "model.token_layers=3"]) == 0
    out = capsys.readouterr().out
    assert "TokenLayers 3, context mode split" in out
    assert f"{'TokenBlock':<20}{102 + 54 + 102:>14,}" in out  # as counted in the parameter test above


def test_runs_end_to_end_with_the_options_and_the_stored_path_agrees(tiny_cfg, tmp_path, cache_dir):
    """Each option through train_point; the stored caches and exact Jacobi evaluation give the default's PPL."""
    from cvfp.training.point import train_point

    def run(name, **sections):
        cfg = tiny_cfg.replace(**{k: getattr(tiny_cfg, k).replace(**v) for k, v in sections.items()})
        return train_point(cfg, 8, tmp_path / name, options=RunOptions(cache_dir=cache_dir, progress=False))

    base = run("base")
    stored = run("stored", phase2={"recompute_contexts": False})
    assert stored["val_ppl"] == pytest.approx(base["val_ppl"], rel=1e-4)
    # Jacobi with more sweeps than validation tokens is exact whatever the model.
    swept = run("jacobi", evaluation={"recurrence": "jacobi", "jacobi_tolerance": 1e-7, "jacobi_max_sweeps": 10_000})
    assert swept["val_ppl"] == pytest.approx(base["val_ppl"], rel=1e-4)
    assert swept["jacobi"]["sweeps"] >= 1 and base["jacobi"] is None
    variant = run("variant", model={"context_mode": "split", "token_layers": 3, "activation": "gelu"},
                  phase1={"diversity": "vicreg", "stop_rule": "improvement"})  # fmt: skip
    assert variant["phase1_stop_rule"] == "improvement" and variant["val_ppl"] != base["val_ppl"]
    assert variant["details"]["parameters"]["token_block"] != base["details"]["parameters"]["token_block"]
