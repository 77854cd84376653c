import pytest
import torch
from conftest import FakeTokenizer

from cvfp.config import ModelConfig, Phase1Config, Phase2Config
from cvfp.inference import CVFPLM
from cvfp.models import build_model
from cvfp.training.caches import TensorCache, parallel_cache, rows, sequential_cache
from cvfp.training.phase1 import convergence_rate, diversity_loss, run_phase1, should_stop
from cvfp.training.phase2 import early_stop, evaluate_cached, run_phase2


def contractive_model(arch="e"):
    """A tiny ContextBlock whose output barely depends on the input context:
    the token term dominates the residual, so the map c -> f(c, x) contracts."""
    cfg = ModelConfig(arch=arch, num_layers=2, context_dim=8, embed_dim=6, vocab_size=30)
    model = build_model(cfg, torch.randn(30, 6, generator=torch.Generator().manual_seed(0)), seed=1)
    with torch.no_grad():
        for layer in model.context_layers:
            layer.fc.weight[:, : layer.ctx_in] *= 0.05
            layer.fc.weight[:, layer.ctx_in :] *= 300
            if layer.residual is not None:
                layer.residual.weight *= 0.05
    return model


def plain_loop(model, ids):
    """The recurrence of algorithm §1 written as plainly as possible."""
    c = torch.zeros(1, model.cfg.context_dim)
    rows = []
    for i in range(len(ids) - 1):
        layers = model.context_step(c, model.step_inputs(ids, i, i + 1))
        rows.append(torch.cat(layers, dim=1))
        c = layers[-1]
    return torch.cat(rows)


@pytest.mark.parametrize("recompute", [True, False])
def test_sequential_cache_equals_plain_loop(recompute):
    model = contractive_model()
    ids = torch.randint(0, 30, (50,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        cache = sequential_cache(model, ids, recompute=recompute, batch_tokens=16)
        assert torch.allclose(rows(cache, 0, 49), plain_loop(model, ids), atol=1e-5)
        assert torch.allclose(rows(cache, 17, 30), plain_loop(model, ids)[17:30], atol=1e-5)


@pytest.mark.parametrize("arch", ["e", "equal-decrease"])
def test_jacobi_iteration_reaches_sequential_recurrence(arch):
    model = contractive_model(arch)
    ids = torch.randint(0, 30, (40,), generator=torch.Generator().manual_seed(3))
    truth = sequential_cache(model, ids).layers(0, len(ids) - 1)[-1]
    errors = {}
    for iterations in (1, 2, len(ids) + 1):
        cfg = Phase1Config(
            max_iterations=iterations, min_iterations=iterations, context_noise=0.0,
            update_context_block=False, batch_tokens=16,
        )  # fmt: skip
        result = run_phase1(model, ids, cfg, torch.Generator().manual_seed(0), progress=False)
        cache = parallel_cache(model, ids, result.contexts, batch_tokens=16)
        errors[iterations] = (cache.layers(0, len(ids) - 1)[-1] - truth).abs().max().item()
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
    # The original's rule (algorithm §2): iterations are numbered from 0 (the random
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
        cached = model.token_logits(cache.layers(0, len(cache)), model.step_inputs(ids, 0, 79))
        c = torch.zeros(1, 8)
        stepwise = []
        for i in range(79):
            c, logits = model.step(c, model.step_inputs(ids, i, i + 1))
            stepwise.append(logits)
    assert torch.allclose(cached, torch.cat(stepwise), atol=1e-5)
    lm = CVFPLM(model, tokenizer=FakeTokenizer())
    streamed = lm.evaluate([ids.numpy()], chunk=17)
    assert streamed["loss"] == pytest.approx(evaluate_cached(model, cache, ids, 13)["loss"], rel=1e-5)


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


def test_phase2_shuffle_visits_every_batch_once_per_epoch_in_an_order_drawn_from_the_seed(monkeypatch):
    from cvfp.training import phase2

    visited = []
    forward = phase2._BatchLoss.forward
    monkeypatch.setattr(
        phase2._BatchLoss, "forward", lambda self, s, e, *a: visited.append(s) or forward(self, s, e, *a)
    )
    train_ids = torch.randint(0, 30, (300,), generator=torch.Generator().manual_seed(5))
    val_ids = torch.randint(0, 30, (60,), generator=torch.Generator().manual_seed(6))

    def epochs(shuffle, seed):
        visited.clear()
        model = contractive_model()
        train, val = sequential_cache(model, train_ids), sequential_cache(model, val_ids)
        cfg = Phase2Config(epochs=3, patience=0, batch_size=32, shuffle=shuffle)
        run_phase2(model, train, train_ids, val, val_ids, cfg, progress=False, seed=seed)
        return [visited[i : i + 10] for i in range(0, 30, 10)]  # 299 rows: 10 batches per epoch

    stream = list(range(0, 299, 32))
    assert epochs(False, 0) == [stream] * 3  # the original's order
    shuffled = epochs(True, 0)
    assert all(sorted(order) == stream for order in shuffled)  # every batch once per epoch
    assert len({tuple(order) for order in shuffled}) == 3 and stream not in shuffled
    assert epochs(True, 0) == shuffled and epochs(True, 1) != shuffled  # drawn from the run seed


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
    flat = torch.randn(10, 16)  # two layers of 8
    cache = TensorCache(contractive_model(), flat, "bfloat16")
    assert cache.nbytes() == 10 * 16 * 2
    assert torch.allclose(rows(cache, 2, 5), flat[2:5], atol=1e-2)
    assert torch.allclose(cache.layers(2, 5)[1], flat[2:5, 8:], atol=1e-2)


def test_context_gap_measures_parallel_against_the_true_recurrence():
    """algorithm §9.2: the gap is between Phase 1's parallel contexts and the plain
    sequential loop; it shrinks to zero as Jacobi sweeps reach the recurrence."""
    from cvfp.training.family_cvfp import context_gap

    model = contractive_model()
    with torch.no_grad():  # a weaker token term: the contexts now depend on their input context
        for layer in model.context_layers:
            layer.fc.weight[:, layer.ctx_in :] *= 0.1
    ids = torch.randint(0, 30, (40,), generator=torch.Generator().manual_seed(8))
    truth = plain_loop(model, ids)[:, -8:]
    gaps = {}
    for iterations in (1, len(ids) + 1):  # the random start alone; enough sweeps to converge
        cfg = Phase1Config(max_iterations=iterations, min_iterations=iterations, context_noise=0.0,
                           update_context_block=False, batch_tokens=16)  # fmt: skip
        result = run_phase1(model, ids, cfg, torch.Generator().manual_seed(0), progress=False)
        cache = parallel_cache(model, ids, result.contexts, batch_tokens=16)
        gap = context_gap(model, ids, cache)
        par = cache.layers(0, len(cache))[-1]
        assert gap["tokens"] == 39
        assert gap["mse"] == pytest.approx((par - truth).pow(2).mean().item(), rel=1e-5, abs=1e-12)
        gaps[iterations] = gap
    # Phase 1 wraps token 0 around to token N-1 and the cache starts from zeros, so
    # the converged gap is small but not zero.
    assert gaps[1]["mse"] > 1e-3 and gaps[1]["relative_norm"] > 1e-2
    assert gaps[len(ids) + 1]["mse"] < gaps[1]["mse"] / 1000


def test_phase1_loss_gradient_and_clip_by_hand(monkeypatch):
    """One Phase 1 iteration against algorithm §2 written out: inputs prev[i-1] + noise
    (token 0 reads prev[N-1]); target prev without noise; (1-w)*MSE + w*D per
    mini-batch, averaged over batches (1/num_batches); gradient clipped before
    the single Adam step."""
    import copy

    model = contractive_model()
    ref = copy.deepcopy(model)
    ids = torch.randint(0, 30, (50,), generator=torch.Generator().manual_seed(9))
    cfg = Phase1Config(max_iterations=2, min_iterations=100, batch_tokens=16, dist_reg_weight=0.3,
                       context_noise=0.1, grad_clip=0.05, learning_rate=0.01)  # fmt: skip
    seen = []
    original_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        seen.append(torch.linalg.norm(torch.stack([g.norm() for g in grads])).item())
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    record = run_phase1(model, ids, cfg, torch.Generator().manual_seed(7), progress=False).history[0]

    g = torch.Generator().manual_seed(7)
    prev = torch.randn(50, 8, generator=g) * cfg.init_context_std
    noise = torch.randn(50, 8, generator=g) * cfg.context_noise
    inputs = torch.cat([prev[49:50], prev[:49]]) + noise
    x = ref.step_inputs(ids)
    w, total, fp_sum, div_sum = 0.3, 0.0, 0.0, 0.0
    for s in (0, 16, 32, 48):  # 4 mini-batches: 16, 16, 16 and 2 rows
        out = ref.context_step(inputs[s : s + 16], x[s : s + 16])[-1]
        fp = ((out - prev[s : s + 16]) ** 2).mean()
        div = -torch.sqrt(((out - out.mean(dim=0)) ** 2).sum()) / out.shape[0]
        total = total + ((1 - w) * fp + w * div) / 4
        fp_sum, div_sum = fp_sum + fp.item() / 4, div_sum + div.item() / 4
    total.backward()
    norm = torch.sqrt(sum((p.grad**2).sum() for p in ref.context_layers.parameters())).item()
    assert record["loss"] == pytest.approx(total.item(), rel=1e-5)
    assert record["fixed_point_loss"] == pytest.approx(fp_sum, rel=1e-5)
    assert record["diversity_loss"] == pytest.approx(div_sum, rel=1e-5)
    assert record["grad_norm"] == pytest.approx(norm, rel=1e-4) and norm > cfg.grad_clip
    assert seen == [pytest.approx(cfg.grad_clip, rel=1e-4)]  # Adam saw the clipped gradient, once


def test_patience_counts_epochs_without_improvement(monkeypatch):
    """Early stopping on scripted validation losses, for patience 1, 2 and 3."""
    from cvfp.training import phase2

    losses = [5.0, 4.0, 4.5, 4.2, 3.0, 3.1, 3.2, 3.3]
    model = contractive_model()
    ids = torch.randint(0, 30, (40,), generator=torch.Generator().manual_seed(5))
    cache = sequential_cache(model, ids)
    for patience, (stop, best) in {1: (3, 2), 2: (4, 2), 3: (8, 5)}.items():
        script = iter(losses)
        monkeypatch.setattr(phase2, "evaluate_cached",
                            lambda *a, script=script, **k: {"loss": (v := next(script)), "ppl": 2.0**v, "acc": 0.1,
                                                            "tokens": 39})  # fmt: skip
        cfg = Phase2Config(epochs=8, patience=patience, batch_size=16)
        result = run_phase2(model, cache, ids, cache, ids, cfg, progress=False)
        assert (result.stopped_epoch, result.best_epoch) == (stop, best), patience
        assert result.best["loss"] == losses[best - 1]
        assert [e["best"] for e in result.epochs] == [e["val_loss"] < min(losses[: e["epoch"] - 1] + [9e9])
                                                      for e in result.epochs]  # fmt: skip


def test_cvfp_training_flops_by_hand():
    from cvfp.training.flops import cvfp_flops

    # 2 Phase 1 sweeps fwd+bwd (6 x 10 x 100 each), 2 epochs of Phase 2 (6 x 20 x 100 each), and the
    # layer contexts: one ContextBlock forward (2 x 10 x 100) per epoch when recomputed, once when stored.
    assert cvfp_flops(10, 20, 100, 3, True, 2, recomputed=True) == 12_000 + 24_000 + 4_000
    assert cvfp_flops(10, 20, 100, 3, True, 2, recomputed=False) == 12_000 + 24_000 + 2_000
    assert cvfp_flops(10, 20, 100, 3, False, 2) == 4_000 + 24_000 + 4_000  # random-context: forward-only sweeps


def test_replaced_contexts_read_another_row_or_zeros():
    """The context-use diagnostic's source: the identity leaves the scores as they are; a permutation makes row i
    read row perm[i]'s contexts; zeros score as the TokenBlock does on zero contexts, by a plain reference."""
    from cvfp.training.caches import ReplacedContexts

    model = contractive_model()
    ids = torch.randint(0, 30, (60,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model.head.weight.normal_()
        cache = sequential_cache(model, ids)
        n = len(cache)
        same = evaluate_cached(model, ReplacedContexts(cache, torch.arange(n)), ids, 16)
        assert same["loss"] == evaluate_cached(model, cache, ids, 16)["loss"]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(6))
        moved = ReplacedContexts(cache, perm).layers(10, 20)
        assert all(torch.equal(m, c[perm[10:20]]) for m, c in zip(moved, cache.layers(0, n)))
        zero = evaluate_cached(model, ReplacedContexts(cache, None), ids, 16)
        contexts = [torch.zeros_like(c) for c in cache.layers(0, n)]
        logits = model.token_logits(contexts, model.step_inputs(ids, 0, n))
        reference = torch.nn.functional.cross_entropy(logits, ids[1:]).item()
    assert zero["loss"] == pytest.approx(reference, rel=1e-5) and zero["loss"] != same["loss"]
