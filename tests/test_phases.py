import pytest
import torch

from cvfp.caches import TensorCache, parallel_cache, sequential_cache
from cvfp.config import ModelConfig, Phase1Config, Phase2Config
from cvfp.inference import CVFPLM
from cvfp.models import CVFPModel
from cvfp.phase1 import convergence_rate, diversity_loss, run_phase1, should_stop
from cvfp.phase2 import early_stop, evaluate_cached, run_phase2


def contractive_model(arch="e"):
    """A tiny ContextBlock whose output barely depends on the input context:
    the token term dominates the residual, so the map c -> f(c, x) contracts."""
    cfg = ModelConfig(arch=arch, num_layers=2, context_dim=8, embed_dim=6, vocab_size=30)
    model = CVFPModel(cfg, torch.randn(30, 6, generator=torch.Generator().manual_seed(0)), seed=1)
    with torch.no_grad():
        for layer in model.context_layers:
            layer.fc.weight[:, : layer.ctx_in] *= 0.05
            layer.fc.weight[:, layer.ctx_in :] *= 300
            if layer.residual is not None:
                layer.residual.weight *= 0.05
    return model


def plain_loop(model, ids):
    """The recurrence of SPEC 1 written as plainly as possible."""
    c = torch.zeros(1, model.cfg.context_dim)
    rows = []
    for i in range(len(ids) - 1):
        layers = model.context_step(c, model.step_inputs(ids, i, i + 1))
        rows.append(torch.cat(layers, dim=1))
        c = layers[-1]
    return torch.cat(rows)


def test_sequential_cache_equals_plain_loop():
    model = contractive_model()
    ids = torch.randint(0, 30, (50,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(sequential_cache(model, ids).data, plain_loop(model, ids), atol=1e-6)


@pytest.mark.parametrize("arch", ["e", "equal-decrease"])
def test_jacobi_iteration_reaches_sequential_recurrence(arch):
    model = contractive_model(arch)
    ids = torch.randint(0, 30, (40,), generator=torch.Generator().manual_seed(3))
    truth = sequential_cache(model, ids).final_layer(8)
    errors = {}
    for iterations in (1, 2, len(ids) + 1):
        cfg = Phase1Config(
            max_iterations=iterations, min_iterations=iterations, context_noise=0.0,
            update_context_block=False, batch_tokens=16,
        )  # fmt: skip
        result = run_phase1(model, ids, cfg, torch.Generator().manual_seed(0), progress=False)
        cache = parallel_cache(model, ids, result.contexts, batch_tokens=16)
        errors[iterations] = (cache.final_layer(8) - truth).abs().max().item()
    # Iteration 0 alone (random contexts) is far off; each sweep fixes one more
    # step of the chain, and after T iterations the contexts equal the recurrence.
    assert errors[1] > 1e-4
    assert errors[2] < errors[1] / 100
    assert errors[len(ids) + 1] < 1e-5


def test_convergence_rate_and_stop_rule():
    prev = torch.zeros(4, 2)
    out = torch.tensor([[0.0, 0.0], [0.1, 0.1], [0.2, 0.2], [1.0, 1.0]])
    # per-token mean squared change: 0, 0.01, 0.04, 1.0 -> two under 0.03
    assert convergence_rate(out, prev, 0.03) == 0.5
    # The original's rule (SPEC 2): iterations are numbered from 0 (the random
    # start); stop after iteration i once i + 1 >= min and the rate is reached.
    cfg = Phase1Config(min_iterations=5, stop_rate=0.99)
    assert not should_stop(3, 1.0, cfg)
    assert should_stop(4, 0.99, cfg)  # the earliest stop: 5 iterations, 4 Adam steps
    assert not should_stop(6, 0.98, cfg)


def test_diversity_loss_by_hand():
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # centred, Frobenius norm sqrt(2)
    assert diversity_loss(x).item() == pytest.approx(-(2**0.5) / 2)


def test_phase1_counts_iteration_zero_and_respects_max():
    model = contractive_model()
    ids = torch.randint(0, 30, (64,))
    cfg = Phase1Config(max_iterations=4, min_iterations=100, batch_tokens=20)
    result = run_phase1(model, ids, cfg, torch.Generator().manual_seed(0), progress=False)
    assert result.iterations == 4 and len(result.history) == 3 and not result.converged
    stop_cfg = Phase1Config(max_iterations=40, min_iterations=3, stop_rate=0.0, batch_tokens=20)
    stopped = run_phase1(model, ids, stop_cfg, torch.Generator().manual_seed(0), progress=False)
    assert stopped.iterations == 3 and len(stopped.history) == 2 and stopped.converged


def test_phase1_takes_one_step_per_iteration():
    model = contractive_model()
    ids = torch.randint(0, 30, (64,))
    before = [p.detach().clone() for p in model.context_layers.parameters()]
    cfg = Phase1Config(max_iterations=2, min_iterations=5, batch_tokens=10, learning_rate=0.01)
    run_phase1(model, ids, cfg, torch.Generator().manual_seed(0), progress=False)
    moved = max((p - b).abs().max().item() for p, b in zip(model.context_layers.parameters(), before))
    # Adam's first step moves every weight with a gradient by about lr, never by 7 steps' worth.
    assert 0.005 < moved <= 0.0101


def test_early_stop_rule():
    assert not early_stop(0, 1) and early_stop(1, 1)
    assert not early_stop(1, 2) and early_stop(2, 2)
    assert not early_stop(5, 0)  # 0 = fixed epochs


def test_cached_phase2_equals_token_by_token_model():
    model = contractive_model()
    ids = torch.randint(0, 30, (80,), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        model.head.weight.normal_()
        cache = sequential_cache(model, ids)
        cached = model.token_logits(model.split_contexts(cache.rows(0, len(cache))), model.step_inputs(ids, 0, 79))
        c = torch.zeros(1, 8)
        stepwise = []
        for i in range(79):
            c, logits = model.step(c, model.step_inputs(ids, i, i + 1))
            stepwise.append(logits)
    assert torch.allclose(cached, torch.cat(stepwise), atol=1e-5)
    lm = CVFPLM(model, tokenizer=_FakeTokenizer())
    streamed = lm.evaluate([ids.numpy()], chunk=17)
    assert streamed["loss"] == pytest.approx(evaluate_cached(model, cache, ids, 13)["loss"], rel=1e-5)


class _FakeTokenizer:
    name, vocab_size, eot_id = "fake", 30, 0

    def token_byte_lengths(self):
        import numpy as np

        return np.ones(30, dtype=np.int64)


def test_phase2_patience_restore_and_fixed_epochs():
    model = contractive_model()
    train_ids = torch.randint(0, 30, (300,), generator=torch.Generator().manual_seed(5))
    val_ids = torch.randint(0, 30, (60,), generator=torch.Generator().manual_seed(6))
    train, val = sequential_cache(model, train_ids), sequential_cache(model, val_ids)
    fixed = run_phase2(model, train, train_ids, val, val_ids, Phase2Config(epochs=4, patience=0, batch_size=32),
                       progress=False)  # fmt: skip
    assert fixed.stopped_epoch == 4 and len(fixed.epochs) == 4
    best = min(fixed.epochs, key=lambda e: e["val_loss"])
    assert fixed.best_epoch == best["epoch"] and fixed.best["loss"] == best["val_loss"]
    # Restore: the model ends with the best epoch's weights.
    model2 = contractive_model()
    cfg = Phase2Config(epochs=6, patience=0, batch_size=32, learning_rate=0.05, restore_best=True)
    result = run_phase2(model2, train, train_ids, val, val_ids, cfg, progress=False)
    assert evaluate_cached(model2, val, val_ids, 32)["loss"] == pytest.approx(result.best["loss"], rel=1e-6)


def test_fused_adam_agrees_with_reference_adam():
    """The fast path (fused Adam) and the readable one (per-parameter loop)
    train Phase 2 to the same weights and metrics, up to float rounding."""
    train_ids = torch.randint(0, 30, (300,), generator=torch.Generator().manual_seed(5))
    val_ids = torch.randint(0, 30, (60,), generator=torch.Generator().manual_seed(6))
    runs = {}
    for adam in ("fused", "reference"):
        model = contractive_model()
        train, val = sequential_cache(model, train_ids), sequential_cache(model, val_ids)
        cfg = Phase2Config(epochs=3, patience=0, batch_size=32, learning_rate=0.01, adam=adam)
        runs[adam] = (model, run_phase2(model, train, train_ids, val, val_ids, cfg, progress=False))
    (fused_model, fused), (ref_model, ref) = runs["fused"], runs["reference"]
    assert [e["val_loss"] for e in fused.epochs] == pytest.approx([e["val_loss"] for e in ref.epochs], rel=1e-5)
    start = contractive_model().state_dict()
    for name, value in ref_model.state_dict().items():
        if name.startswith(("token_layers.", "head.")):
            assert not torch.equal(value, start[name])  # training moved it
            torch.testing.assert_close(fused_model.state_dict()[name], value, rtol=1e-4, atol=1e-6)


def test_tensor_cache_lower_precision():
    flat = torch.randn(10, 4)
    cache = TensorCache(flat, "bfloat16")
    assert cache.nbytes() == 10 * 4 * 2
    assert torch.allclose(cache.rows(2, 5), flat[2:5], atol=1e-2)
