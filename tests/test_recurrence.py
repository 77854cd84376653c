"""Every fast path of the recurrence, the caches, Phase 1 and the head loss pinned to its reference."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import FakeTokenizer

from cvfp.config import ModelConfig, Phase1Config, Phase2Config
from cvfp.inference import CVFPLM
from cvfp.models import build_model
from cvfp.models.heads import (
    head_logits,
    linear_cross_entropy,
    reference_cross_entropy,
    reference_row_scores,
    row_scores,
    top1_hits,
)
from cvfp.models.recurrence import jacobi, recur, sequential, sequential_reference, sequential_streams
from cvfp.training.caches import ContextCache, TensorCache, parallel_cache, rows, sequential_cache
from cvfp.training.phase1 import diversity_loss, run_phase1
from cvfp.training.phase2 import evaluate_cached, run_phase2
from cvfp.training.point import RunOptions


def model_of(arch="e", k=1, seed=1, layers=2, scale=1.0, token_scale=1.0):
    """A tiny model; ``scale`` / ``token_scale`` multiply the context / token halves of the ContextBlock's weights
    (a small context half and a large token half make c -> f(c, x) a contraction despite the residual)."""
    cfg = ModelConfig(arch=arch, num_layers=layers, context_dim=8, embed_dim=6, vocab_size=30, input_tokens=k)
    model = build_model(cfg, torch.randn(30, 6, generator=torch.Generator().manual_seed(0)), seed=seed)
    with torch.no_grad():
        for layer in model.context_layers:
            layer.fc.weight[:, : layer.ctx_in] *= scale
            layer.fc.weight[:, layer.ctx_in :] *= token_scale
    return model


def stream(n, seed=2):
    return torch.randint(0, 30, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch,k", [("e", 1), ("e", 3), ("equal-decrease", 1), ("equal-decrease", 2)])
def test_fast_sequential_equals_the_plain_loop(arch, k):
    model = model_of(arch, k)
    ids = stream(70)
    truth = sequential_reference(model, ids)
    chunks = list(sequential(model, ids, chunk=16))  # the running context crosses chunk boundaries
    assert [s for s, _ in chunks] == [0, 16, 32, 48, 64]
    torch.testing.assert_close(torch.cat([f for _, f in chunks]), truth, atol=1e-5, rtol=1e-5)
    assert truth.abs().max() > 0.1  # contexts are not trivially zero


def test_streams_side_by_side_equal_each_stream_alone():
    model = model_of("e", 2)
    streams = [stream(n, seed) for n, seed in ((5, 1), (40, 2), (2, 3), (23, 4))]
    together = sequential_streams(model, streams)
    for ids, finals in zip(streams, together):
        assert finals.shape == (ids.shape[0] - 1, 8)
        torch.testing.assert_close(finals, sequential_reference(model, ids), atol=1e-5, rtol=1e-5)


def test_recur_continues_from_a_given_context():
    model = model_of()
    ids = stream(30)
    truth = sequential_reference(model, ids)
    x = model.step_inputs(ids, 10, 29)[None]
    torch.testing.assert_close(recur(model, x, truth[9:10])[0], truth[10:], atol=1e-5, rtol=1e-5)


def test_jacobi_reaches_the_recurrence_and_reports_its_sweeps():
    ids = stream(60)
    contractive = model_of(scale=0.05, token_scale=300)
    result = jacobi(contractive, ids, tolerance=1e-6, max_sweeps=100, chunk=16)
    truth = sequential_reference(contractive, ids)
    assert result.converged and result.residual <= 1e-6
    assert 2 <= result.sweeps < 15  # geometric convergence: far fewer sweeps than tokens
    torch.testing.assert_close(result.finals, truth, atol=1e-5, rtol=0)
    # Too few sweeps: reported as not converged, with the residual it stopped at.
    short = jacobi(contractive, ids, tolerance=1e-12, max_sweeps=2, chunk=16)
    assert not short.converged and short.sweeps == 2 and short.residual > 1e-12
    # Whatever the block, N - 1 sweeps are exact (one more row per sweep).
    wild = model_of(scale=3.0)
    exact = jacobi(wild, ids, tolerance=0.0 + 1e-30, max_sweeps=len(ids) - 1, chunk=7)
    torch.testing.assert_close(exact.finals, sequential_reference(wild, ids), atol=1e-5, rtol=1e-5)


def test_context_cache_recomputes_what_the_stored_cache_holds():
    model = model_of("equal-decrease", 2)
    ids = stream(50)
    prev = torch.randn(50, 8, generator=torch.Generator().manual_seed(5))
    lean = parallel_cache(model, ids, prev, batch_tokens=16)
    stored = parallel_cache(model, ids, prev, batch_tokens=16, recompute=False)
    assert isinstance(lean, ContextCache) and isinstance(stored, TensorCache)
    assert len(lean) == len(stored) == 49
    # The seed's definition: row i from input context prev[i-1] (zeros for row 0), written out.
    inputs = torch.cat([torch.zeros(1, 8), prev[:48]])
    with torch.no_grad():
        truth = torch.cat(model.context_step(inputs, model.step_inputs(ids, 0, 49)), dim=1)
    for a, b in ((0, 49), (0, 1), (13, 40), (48, 49)):
        torch.testing.assert_close(rows(lean, a, b), truth[a:b], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rows(stored, a, b), truth[a:b], atol=1e-5, rtol=1e-5)
    # One context per token instead of every layer's.
    assert lean.nbytes() == 50 * 8 * 4 and stored.nbytes() == 49 * sum(model.context_widths) * 4
    half = ContextCache(model, ids, prev, "bfloat16")
    assert half.nbytes() == 50 * 8 * 2
    torch.testing.assert_close(rows(half, 0, 49), truth, atol=0.05, rtol=0.05)


def test_phase2_on_recomputed_contexts_equals_phase2_on_stored_ones():
    train_ids, val_ids = stream(300, 5), stream(60, 6)
    runs = []
    for recompute in (True, False):
        model = model_of(scale=0.3)
        train = sequential_cache(model, train_ids, recompute=recompute, batch_tokens=64)
        val = sequential_cache(model, val_ids, recompute=recompute, batch_tokens=64)
        cfg = Phase2Config(epochs=3, patience=0, batch_size=32, learning_rate=0.01)
        runs.append(run_phase2(model, train, train_ids, val, val_ids, cfg, progress=False))
    assert [e["val_loss"] for e in runs[0].epochs] == pytest.approx([e["val_loss"] for e in runs[1].epochs], rel=1e-4)
    assert runs[0].epochs[-1]["train_ppl"] < runs[0].epochs[0]["train_ppl"] * 0.9  # it trained


def reference_phase1(model, ids, cfg, generator):
    """Phase 1 as the original wrote it: whole-stream noise, input and output copies each iteration."""
    n, w = ids.shape[0], cfg.dist_reg_weight
    params = list(model.context_layers.parameters())
    optimizer = torch.optim.Adam(params, lr=cfg.learning_rate)
    batches = range(0, n, cfg.batch_tokens)
    prev = torch.randn(n, 8, generator=generator) * cfg.init_context_std
    for _ in range(1, cfg.max_iterations):
        inputs = torch.roll(prev, shifts=1, dims=0) + torch.randn(n, 8, generator=generator) * cfg.context_noise
        out_all = torch.empty_like(prev)
        optimizer.zero_grad()
        for s in batches:
            out = model.context_step(
                inputs[s : s + cfg.batch_tokens], model.step_inputs(ids, s, min(n, s + cfg.batch_tokens))
            )[-1]
            loss = (1 - w) * torch.nn.functional.mse_loss(out, prev[s : s + cfg.batch_tokens]) + w * diversity_loss(out)
            (loss / len(batches)).backward()
            out_all[s : s + cfg.batch_tokens] = out.detach()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        prev = out_all
    return prev


def test_in_place_phase1_equals_the_whole_stream_original():
    """The lean Phase 1 (one context tensor, overwritten batch by batch; noise drawn
    batch by batch) gives the original's contexts and weights over several iterations."""
    model = model_of(scale=0.5)
    ref = copy.deepcopy(model)
    ids = stream(70)
    cfg = Phase1Config(max_iterations=4, min_iterations=100, batch_tokens=16, learning_rate=0.01)  # 16 x 8: whole draws
    lean = run_phase1(model, ids, cfg, torch.Generator().manual_seed(3), progress=False)
    truth = reference_phase1(ref, ids, cfg, torch.Generator().manual_seed(3))
    torch.testing.assert_close(lean.contexts, truth, atol=1e-5, rtol=1e-5)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_phase1_with_16_bit_contexts_stays_close_to_float32():
    ids = stream(80)
    cfg = Phase1Config(max_iterations=4, min_iterations=100, batch_tokens=32)
    full = run_phase1(model_of(), ids, cfg, torch.Generator().manual_seed(3), progress=False)
    half = run_phase1(
        model_of(), ids, cfg, torch.Generator().manual_seed(3), progress=False, store_dtype=torch.bfloat16
    )
    assert half.contexts.dtype == torch.bfloat16
    torch.testing.assert_close(half.contexts.float(), full.contexts, atol=0.05, rtol=0.05)
    assert half.history[-1]["loss"] == pytest.approx(full.history[-1]["loss"], rel=0.02)


@pytest.mark.parametrize("rows_,chunk", [(37, 8), (64, 64), (5, 100)])
def test_chunked_head_loss_equals_the_plain_one(rows_, chunk):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(rows_, 6, generator=g, requires_grad=True)
    weight = (torch.randn(30, 6, generator=g) * 0.5).requires_grad_()
    bias = (torch.randn(30, generator=g) * 0.1).requires_grad_()
    targets = torch.randint(0, 30, (rows_,), generator=g)
    loss = linear_cross_entropy(t, weight, bias, targets, chunk=chunk)
    (2.5 * loss).backward()  # a scaled upstream gradient reaches every input
    got = [x.grad.clone() for x in (t, weight, bias)]
    for x in (t, weight, bias):
        x.grad = None
    ref = reference_cross_entropy(t, weight, bias, targets)
    (2.5 * ref).backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, x in zip(got, (t, weight, bias)):
        torch.testing.assert_close(a, x.grad, atol=1e-6, rtol=1e-5)
    # A tied head (frozen table, no bias): only t gets a gradient.
    t.grad = None
    frozen = weight.detach()
    linear_cross_entropy(t, frozen, None, targets, chunk=chunk).backward()
    expected = torch.autograd.grad(reference_cross_entropy(t, frozen, None, targets), t)[0]
    torch.testing.assert_close(t.grad, expected, atol=1e-6, rtol=1e-5)
    with torch.no_grad():  # scoring: no gradients formed
        assert linear_cross_entropy(t, weight, bias, targets, chunk).item() == pytest.approx(ref.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_in_place_scoring_equals_the_plain_one(dtype):
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(41, 30, generator=g) * 4).to(dtype)
    logits[3, 7] = logits[3, 11] = logits[3].max() + 1  # a tie: both paths name the first maximum
    targets = torch.randint(0, 30, (41,), generator=g)
    targets[:5] = logits[:5].float().argmax(dim=-1)  # some hits, whatever the draw
    nats_ref, hits_ref = reference_row_scores(logits, targets)
    nats, hits = row_scores(logits.clone(), targets)
    torch.testing.assert_close(nats, nats_ref, rtol=1e-6, atol=1e-6)
    assert torch.equal(hits, hits_ref) and hits.sum() >= 5


def test_top1_hits_follow_argmax_on_ties():
    """A target tied with an earlier maximum is a miss, a target tied with a later one a hit, as argmax says;
    with few rows at their maximum (the rows read alone) and with every row tied (an untrained head)."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(400, 30, generator=g)
    targets = torch.randint(0, 30, (400,), generator=g)
    top = logits.amax(dim=-1)
    logits[:40, 0] = top[:40]  # a tied maximum at index 0: a miss unless the target is 0
    targets[:40] = torch.randint(1, 30, (40,), generator=g)
    logits[torch.arange(40), targets[:40]] = top[:40]
    targets[40:60] = logits[40:60].argmax(dim=-1)  # unique maxima: hits
    logits[40:60, 29] = top[40:60]  # ... still hits when a later logit ties them
    targets[40:60] = torch.where(targets[40:60] == 29, 28, targets[40:60])
    logits[torch.arange(40, 60), targets[40:60]] = top[40:60]
    for x in (logits, torch.zeros(400, 30)):
        expected = (x.argmax(dim=-1) == targets).sum().item()
        assert top1_hits(x, targets, x.amax(dim=-1), x.gather(1, targets[:, None])[:, 0]).sum().item() == expected
        assert row_scores(x.clone(), targets)[1].sum().item() == expected
    assert (logits.argmax(dim=-1) == targets).sum() >= 20  # the hits above, whatever the draw
    naive = (logits.gather(1, targets[:, None])[:, 0] == logits.amax(dim=-1)).sum()
    assert naive >= (logits.argmax(dim=-1) == targets).sum() + 40  # the earlier ties are misses


def test_head_logits_equal_f_linear_with_and_without_bias_and_buffer():
    g = torch.Generator().manual_seed(2)
    t, weight, bias = torch.randn(9, 6, generator=g), torch.randn(30, 6, generator=g), torch.randn(30, generator=g)
    buffer = torch.full((12, 30), float("nan"))
    torch.testing.assert_close(head_logits(t, weight, bias, out=buffer[:9]), F.linear(t, weight, bias))
    torch.testing.assert_close(head_logits(t, weight, None), F.linear(t, weight))


def trained_model():
    """A model with a contracting ContextBlock (as Phase 1 leaves the quick preset's: ``bench/recurrence.py``
    measures 4 Jacobi sweeps per decade of residual there) and a TokenBlock + head trained on a repetitive stream.
    Tiny blocks trained by Phase 1 here do not contract, so the contraction is built in."""
    model = model_of(scale=0.05, token_scale=300)
    model.context_layers.requires_grad_(False)
    ids = torch.tensor(([1, 5, 7, 2, 9, 5, 3] * 40) + list(range(30)) * 3)
    cache = sequential_cache(model, ids)
    result = run_phase2(model, cache, ids, cache, ids, Phase2Config(epochs=4, batch_size=64, learning_rate=0.01),
                        progress=False)  # fmt: skip
    assert result.best["ppl"] < 15  # it learned the repeated pattern (30-way chance: 30)
    return model, ids


def test_jacobi_evaluation_matches_the_sequential_ppl_of_a_trained_model():
    model, ids = trained_model()
    lm = CVFPLM(model, tokenizer=FakeTokenizer())
    exact = lm.evaluate([ids.numpy()], chunk=64)
    swept = lm.evaluate([ids.numpy()], chunk=64, jacobi_tolerance=1e-5)
    assert f"{swept['ppl']:.4g}" == f"{exact['ppl']:.4g}"
    assert swept["jacobi"]["converged"] and swept["jacobi"]["residual"] <= 1e-5
    assert swept["jacobi"]["sweeps"] < len(ids) // 10
    assert "jacobi" not in exact


def test_documents_side_by_side_score_like_one_at_a_time():
    model, ids = trained_model()
    lm = CVFPLM(model, tokenizer=FakeTokenizer())
    docs = [ids[:50].numpy(), ids[50:53].numpy(), ids[53:200].numpy(), ids[200:201].numpy()]
    together = lm.evaluate(docs, reset_each=True)
    nats = count = 0
    for d in docs[:3]:  # the 1-token document has nothing to predict
        one = lm.evaluate([d])
        nats, count = nats + one["loss"] * one["tokens"], count + one["tokens"]
    assert together["tokens"] == count == 49 + 2 + 146
    assert together["loss"] == pytest.approx(nats / count, rel=1e-5)
    # The cached Phase 2 scoring of one document agrees with the streaming evaluator.
    doc = torch.as_tensor(docs[2])
    assert lm.evaluate([docs[2]])["loss"] == pytest.approx(
        evaluate_cached(model, sequential_cache(model, doc), doc, 32)["loss"], rel=1e-5
    )


@pytest.mark.parametrize("arch,steps", [("e", 8), ("equal-decrease", 5)])
def test_step_block_cpu_twin_of_the_cuda_graph_equals_the_plain_loop(arch, steps):
    """The body a CUDA graph captures (static buffers, blocks of ``steps`` tokens, a padded last block),
    run eagerly: the same contexts as the plain loop, across blocks and for several streams."""
    from cvfp.models.recurrence import StepBlock, recur_blocks

    model = model_of(arch, k=2)
    streams = [stream(30, 1), stream(30, 2)]
    x = torch.stack([model.step_inputs(s, 0, 29) for s in streams])
    block = StepBlock(model, streams=2, steps=steps, graph=False)
    with torch.no_grad():
        finals = recur_blocks(model, block, x, torch.zeros(2, 8))
    for i, ids in enumerate(streams):
        torch.testing.assert_close(finals[i], sequential_reference(model, ids), atol=1e-5, rtol=1e-5)


def test_memory_check_refuses_a_point_that_cannot_fit_before_any_work(tiny_cfg, tmp_path, monkeypatch):
    from cvfp.training import memory
    from cvfp.training.point import train_point

    est = memory.estimate(tiny_cfg, 1000, 100)
    assert est.per_train_token == 16 * 4 + memory.ID_BYTES  # one float32 context of C = 16 per token, plus its id
    half = memory.estimate(tiny_cfg.replace(phase2=tiny_cfg.phase2.replace(cache_dtype="bfloat16")), 1000, 100)
    assert half.per_train_token == 16 * 2 + memory.ID_BYTES
    stored = memory.estimate(tiny_cfg.replace(phase2=tiny_cfg.phase2.replace(recompute_contexts=False)), 1000, 100)
    assert stored.per_train_token == est.per_train_token + 2 * 16 * 4  # every layer's contexts as well
    assert memory.estimate(tiny_cfg, 2000, 100).total_bytes - est.total_bytes == 1000 * est.per_train_token
    assert est.max_train_tokens(est.total_bytes) == 1000

    monkeypatch.setattr(memory, "available_bytes", lambda device: 10)
    with pytest.raises(memory.InsufficientMemory, match=r"at most 0 train tokens fit"):
        train_point(tiny_cfg, 8, tmp_path / "run", options=RunOptions(cache_dir=tmp_path / "cache", progress=False))
    assert not (tmp_path / "run").exists()  # refused before the run folder was written


def test_a_point_records_its_peak_memory_and_estimate(tiny_cfg, tmp_path):
    from cvfp.training.point import train_point

    summary = train_point(
        tiny_cfg, 8, tmp_path / "run", options=RunOptions(cache_dir=tmp_path / "cache", progress=False)
    )
    mem = summary["memory"]
    assert mem["peak_rss_bytes"] > 50e6 and mem["peak_cuda_bytes"] is None
    assert mem["estimate_bytes"] > mem["peak_rss_bytes"] * 0.5  # the estimate is of the same order (an upper model)
