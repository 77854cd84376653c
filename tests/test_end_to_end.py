"""Parallel end-to-end training through the fixed point (phase1.objective = "lm"): its Jacobi sweeps, its
gradient, its diagnostics, resume, and a point that trains with it."""

import pytest
import torch
from test_phases import contractive_model

from cvfp.config import ConfigError, ModelConfig, RunConfig
from cvfp.experiments.report import render_markdown
from cvfp.experiments.results import build_results
from cvfp.io.rundir import comparable
from cvfp.models import build_model
from cvfp.training.caches import sequential_cache
from cvfp.training.end_to_end import diagnostics, jacobi, run_end_to_end
from cvfp.training.point import RunOptions, train_point
from cvfp.training.resume import StateStore


def _exact(model, ids):
    cache = sequential_cache(model, ids)
    return cache.layers(0, len(cache))


def expansive_model():
    """A ContextBlock whose contexts depend strongly on the previous one: no early convergence."""
    cfg = ModelConfig(num_layers=2, context_dim=8, embed_dim=6, vocab_size=30, init_weight_std=0.6)
    return build_model(cfg, torch.randn(30, 6, generator=torch.Generator().manual_seed(0)), seed=1)


def test_as_many_jacobi_sweeps_as_tokens_from_zero_are_the_sequential_recurrence():
    model = expansive_model()
    ids = torch.randint(0, 30, (13,), generator=torch.Generator().manual_seed(1))
    x, zero = model.step_inputs(ids, 0, 12), torch.zeros(1, 8)
    with torch.no_grad():
        exact = _exact(model, ids)
        layers, _, _ = jacobi(model, x, zero, torch.zeros(12, 8), sweeps=12, grad_sweeps=1)
        _, _, change = jacobi(model, x, zero, torch.zeros(12, 8), sweeps=13, grad_sweeps=1)
        fewer, _, _ = jacobi(model, x, zero, torch.zeros(12, 8), sweeps=3, grad_sweeps=1)
    for got, want in zip(layers, exact):  # up to float rounding (the recurrence's fast path sums in another order)
        assert torch.allclose(got, want, atol=1e-5)
    assert change.max() < 1e-10  # a sweep beyond T changes nothing: the fixed point
    assert not torch.allclose(fewer[-1], exact[-1], atol=1e-2)  # 3 sweeps reach 3 tokens deep only


def test_sweeps_warm_started_at_the_fixed_point_stay_there():
    model = contractive_model()
    ids = torch.randint(0, 30, (41,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        exact = _exact(model, ids)[-1]
        # the batch [20, 40): the context before it and its own contexts, all from the true recurrence
        layers, _, change = jacobi(model, model.step_inputs(ids, 20, 40), exact[19:20], exact[20:40], 1, 1)
    assert torch.allclose(layers[-1], exact[20:40], atol=1e-6) and change.max() < 1e-10


def test_the_one_step_gradient_is_autograd_through_one_map_with_stopped_inputs():
    model = expansive_model()
    ids = torch.randint(0, 30, (21,), generator=torch.Generator().manual_seed(3))
    x, start, zero = (
        model.step_inputs(ids, 0, 20),
        torch.randn(20, 8, generator=torch.Generator().manual_seed(4)),
        torch.zeros(1, 8),
    )

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in model.context_layers.parameters()]

    layers, _, _ = jacobi(model, x, zero, start, sweeps=3, grad_sweeps=1)
    one_step = grads(layers[-1].pow(2).sum())
    with torch.no_grad():  # the first two sweeps, by hand
        z = start
        for _ in range(2):
            z = model.context_step(torch.cat([zero, z[:-1]]), x)[-1]
    by_hand = grads(model.context_step(torch.cat([zero, z[:-1]]).detach(), x)[-1].pow(2).sum())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(one_step, by_hand))
    layers, _, _ = jacobi(model, x, zero, start, sweeps=3, grad_sweeps=3)  # through every sweep: another gradient
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads(layers[-1].pow(2).sum()), by_hand))


def test_the_contraction_is_the_largest_singular_value_of_the_maps_jacobian():
    """Against a central finite-difference Jacobian of the map at the same token and context."""
    model = contractive_model()
    ids = torch.randint(0, 30, (60,), generator=torch.Generator().manual_seed(5))
    stored = torch.randn(60, 8, generator=torch.Generator().manual_seed(6))
    found = diagnostics(model, ids, stored, seed=0)
    g = torch.Generator().manual_seed(0)
    positions = torch.randint(1, 59, (16,), generator=g).tolist()
    norms = []
    for i in positions:
        x, c, eps = model.step_inputs(ids, i, i + 1).double(), stored[i - 1 : i].double(), 1e-6
        model.double()
        columns = [(model.context_step(c + eps * e, x)[-1] - model.context_step(c - eps * e, x)[-1])[0] / (2 * eps)
                   for e in torch.eye(8, dtype=torch.float64)]  # fmt: skip
        model.float()
        norms.append(torch.linalg.matrix_norm(torch.stack(columns, 1), ord=2).item())
    assert found["contraction_max"] == pytest.approx(max(norms), rel=1e-4)
    assert found["contraction_mean"] == pytest.approx(sum(norms) / 16, rel=1e-4)
    assert found["context_gap"] > 0.5  # random contexts are far from the recurrence's


def _cfg(**phase1) -> RunConfig:
    return RunConfig().override([f"phase1.{k}={v}" for k, v in {"objective": '"lm"', "lm_epochs": 3, **phase1}.items()]
                                + ["phase2.batch_size=16"])  # fmt: skip


def test_resume_inside_the_end_to_end_epochs_is_bitwise(tmp_path):
    ids = torch.randint(0, 30, (81,), generator=torch.Generator().manual_seed(7))
    start = torch.randn(81, 8, generator=torch.Generator().manual_seed(8)) * 0.01
    cfg = _cfg(lm_refresh_every=2)
    straight_model = contractive_model()
    straight = run_end_to_end(straight_model, ids, start, cfg)

    def stop_at_two(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    model, store = contractive_model(), StateStore(tmp_path / "resume")
    with pytest.raises(KeyboardInterrupt):
        run_end_to_end(model, ids, start, cfg, on_record=stop_at_two, state=store)
    model = contractive_model()  # a fresh process: everything from the saved state
    resumed = run_end_to_end(model, ids, start, cfg, state=store)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert torch.equal(resumed.contexts, straight.contexts)
    for (name, a), b in zip(model.state_dict().items(), straight_model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["train_ppl"] for r in resumed.history] == [r["train_ppl"] for r in straight.history]
    assert straight.history[-1]["train_ppl"] < straight.history[0]["train_ppl"]  # it learns


def test_a_null_end_to_end_rate_is_phase_2s_so_one_tuned_rate_trains_both():
    ids = torch.randint(0, 30, (49,), generator=torch.Generator().manual_seed(3))
    start = torch.randn(49, 8, generator=torch.Generator().manual_seed(4)) * 0.01
    tied = _cfg(lm_epochs=1).override(["phase2.learning_rate=0.003"])
    assert tied.phase1.lm_learning_rate is None
    runs = [run_end_to_end(contractive_model(), ids, start, c).history[0]["train_ppl"] for c in
            (tied, _cfg(lm_epochs=1, lm_learning_rate=0.003), _cfg(lm_epochs=1, lm_learning_rate=0.001))]  # fmt: skip
    assert runs[0] == runs[1] != runs[2]
    # A run folder compares by the rate it trained at; the E design never reads the end-to-end fields.
    assert comparable(tied) == comparable(tied.override(["phase1.lm_learning_rate=0.003"]))
    assert comparable(tied) != comparable(tied.override(["phase1.lm_learning_rate=0.001"]))
    seed = RunConfig()
    assert comparable(seed) == comparable(seed.override(["phase1.lm_learning_rate=0.01", "phase1.lm_sweeps=4"]))
    with pytest.raises(ConfigError, match="lm_learning_rate"):
        _cfg(lm_learning_rate=0.0)


def test_a_point_trains_end_to_end_and_the_controls_refuse_it(tiny_cfg, tmp_path, cache_dir):
    cfg = tiny_cfg.override(['phase1.objective="lm"', "phase1.lm_epochs=2", "phase2.epochs=2"])
    summary = train_point(cfg, 8, tmp_path / "lm", options=RunOptions(cache_dir=cache_dir, progress=False))
    epochs = summary["details"]["end_to_end"]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for key in ("residual", "converged_rate", "context_gap", "contraction_max", "contraction_mean"):
        assert all(e[key] >= 0 for e in epochs)
    assert summary["phase1_iterations"] >= 1 and summary["context_gap"] is not None
    results = build_results(cfg, [8], [cfg.seed], [summary], [], None, {})
    table = render_markdown(results).split("## End-to-end training")[1]
    assert f"| 8 | {cfg.seed} | 2 | " in table  # each end-to-end epoch of the run, in its report
    seed_run = train_point(tiny_cfg.override(["phase2.epochs=2"]), 8, tmp_path / "seed",
                           options=RunOptions(cache_dir=cache_dir, progress=False))  # fmt: skip
    assert summary["train_flops"] > seed_run["train_flops"]  # the end-to-end epochs are counted
    cold = train_point(cfg.override(["phase1.lm_warm_start=false"]), 8, tmp_path / "cold",
                       options=RunOptions(cache_dir=cache_dir, progress=False))  # fmt: skip
    assert cold["phase1_iterations"] == 0  # no warm start: from zero contexts
    with pytest.raises(ConfigError, match="not with random-context"):
        train_point(cfg.override(['model.arch="random-context"']), 8, tmp_path / "rc",
                    options=RunOptions(cache_dir=cache_dir, progress=False))  # fmt: skip
