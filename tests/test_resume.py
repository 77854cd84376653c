"""Resume inside a point: a run interrupted in Phase 1 or Phase 2 continues from its saved state and
ends, on CPU, bitwise where an uninterrupted run ends."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from cvfp.io.rundir import RunDir, read_json
from cvfp.training.point import RunOptions, train_point
from cvfp.training.resume import StateStore, load_optimizer_state, optimizer_state

TIMING = {"seconds", "phase1_seconds", "phase2_seconds", "cache_seconds", "memory"}


def results_of(run_dir) -> tuple[dict, dict]:
    """A finished run's numbers (timings dropped) and its checkpoint's weights."""
    summary = read_json(run_dir / "summary.json")
    numbers = {k: v for k, v in summary.items() if k not in TIMING}
    numbers["epochs"] = [{k: v for k, v in e.items() if k != "seconds"} for e in summary["epochs"]]
    return numbers, load_file(str(run_dir / "checkpoint" / "model.safetensors"))


def interrupt_at(monkeypatch, record: int) -> None:
    """Raise KeyboardInterrupt when the run logs its ``record``-th metric (Phase 1 iterations, then epochs)."""
    original, count = RunDir.log_metric, []

    def log_metric(self, rec):
        original(self, rec)
        count.append(1)
        if len(count) == record:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "log_metric", log_metric)


@pytest.fixture
def resumable_cfg(tiny_cfg):
    return tiny_cfg.override(["phase1.max_iterations=6", "phase1.stop_rule=\"fixed\"", "phase1.save_every=2",
                              "phase1.batch_tokens=128", "phase2.epochs=3", "phase2.patience=0"])  # fmt: skip


@pytest.mark.parametrize("stops", [[4], [7], [3, 2, 2]], ids=["phase1", "phase2", "three-kills"])
def test_an_interrupted_point_ends_bitwise_where_an_uninterrupted_one_does(resumable_cfg, tmp_path, cache_dir,
                                                                           monkeypatch, stops):  # fmt: skip
    reference = tmp_path / "reference"
    train_point(resumable_cfg, 8, reference, options=RunOptions(cache_dir=cache_dir, progress=False))
    out = tmp_path / "killed"
    for record in stops:  # records 1-5: Phase 1 iterations 1-5; 6-8: Phase 2 epochs 1-3
        interrupt_at(monkeypatch, record)
        with pytest.raises(KeyboardInterrupt):
            train_point(resumable_cfg, 8, out, options=RunOptions(cache_dir=cache_dir, progress=False))
        monkeypatch.undo()
        assert (out / "resume").is_dir() and not (out / "summary.json").exists()
    train_point(resumable_cfg, 8, out, options=RunOptions(cache_dir=cache_dir, progress=False))
    numbers, weights = results_of(out)
    expected_numbers, expected_weights = results_of(reference)
    assert numbers == expected_numbers
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in weights)
    assert not (out / "resume").exists()  # removed once the run is finished
    records = [r for r in map(__import__("json").loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert [r.get("iteration", r.get("epoch")) for r in records] == [1, 2, 3, 4, 5, 1, 2, 3]


def test_a_baseline_resumes_inside_its_training(tiny_cfg, tmp_path, cache_dir, monkeypatch):
    cfg = tiny_cfg.override(['model.arch="lstm"', "phase2.epochs=3", "phase2.patience=0"])
    train_point(cfg, 8, tmp_path / "reference", options=RunOptions(cache_dir=cache_dir, progress=False))
    interrupt_at(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_point(cfg, 8, tmp_path / "killed", options=RunOptions(cache_dir=cache_dir, progress=False))
    monkeypatch.undo()
    train_point(cfg, 8, tmp_path / "killed", options=RunOptions(cache_dir=cache_dir, progress=False))
    numbers, weights = results_of(tmp_path / "killed")
    expected_numbers, expected_weights = results_of(tmp_path / "reference")
    assert numbers == expected_numbers and all(torch.equal(weights[k], expected_weights[k]) for k in weights)


def interrupted(cfg, out, cache_dir, monkeypatch, record: int = 4):
    """``out`` after a run of ``cfg`` interrupted at its ``record``-th metric record."""
    interrupt_at(monkeypatch, record)
    with pytest.raises(KeyboardInterrupt):
        train_point(cfg, 8, out, options=RunOptions(cache_dir=cache_dir, progress=False))
    monkeypatch.undo()
    return out


def test_a_state_of_another_config_or_size_is_never_resumed(resumable_cfg, tmp_path, cache_dir, monkeypatch):
    out = interrupted(resumable_cfg, tmp_path / "p", cache_dir, monkeypatch)
    assert StateStore(out / "resume").load("phase1") is not None
    other = resumable_cfg.override(["phase1.learning_rate=0.01"])
    train_point(other, 8, out, options=RunOptions(cache_dir=cache_dir, progress=False))
    fresh = tmp_path / "fresh"
    train_point(other, 8, fresh, options=RunOptions(cache_dir=cache_dir, progress=False))
    assert results_of(out)[0] == results_of(fresh)[0]


def test_a_damaged_state_restarts_the_phase(resumable_cfg, tmp_path, cache_dir, monkeypatch):
    out = interrupted(resumable_cfg, tmp_path / "p", cache_dir, monkeypatch)
    (out / "resume" / "phase1.safetensors").write_bytes(b"\x00" * 40)  # a torn or foreign file
    assert StateStore(out / "resume").load("phase1") is None
    train_point(resumable_cfg, 8, out, options=RunOptions(cache_dir=cache_dir, progress=False))
    train_point(resumable_cfg, 8, tmp_path / "fresh", options=RunOptions(cache_dir=cache_dir, progress=False))
    assert results_of(out)[0] == results_of(tmp_path / "fresh")[0]


def test_a_kill_between_phase1s_last_save_and_its_final_save_resumes_to_the_right_count(tiny_cfg, monkeypatch,
                                                                                        tmp_path):  # fmt: skip
    """The last iteration's in-loop save lands, the final one does not: the resumed Phase 1 runs no iteration
    and must report every iteration run (3), not 1, with the uninterrupted run's contexts and history."""
    from cvfp.models import build_model
    from cvfp.training import phase1

    cfg = tiny_cfg.phase1.replace(max_iterations=3, stop_rule="fixed", save_every=1, batch_tokens=64)
    ids = torch.randint(0, 30, (200,), generator=torch.Generator().manual_seed(5))

    def run(store):
        table = torch.randn(30, 6, generator=torch.Generator().manual_seed(0))
        model = build_model(tiny_cfg.model.replace(vocab_size=30, embed_dim=6), table, seed=1)
        return phase1.run_phase1(model, ids, cfg, torch.Generator().manual_seed(2), progress=False, state=store)

    reference = run(None)
    original = phase1._Saver.save_result

    def killed(self, result):
        raise KeyboardInterrupt

    monkeypatch.setattr(phase1._Saver, "save_result", killed)
    store = StateStore(tmp_path / "resume")
    with pytest.raises(KeyboardInterrupt):
        run(store)
    monkeypatch.setattr(phase1._Saver, "save_result", original)
    resumed = run(store)
    assert resumed.iterations == reference.iterations == 3
    assert torch.equal(resumed.contexts, reference.contexts)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in reference.history]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history] == strip


def test_optimizer_state_round_trips_exactly():
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    opt = torch.optim.Adam(params, lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        sum(p.pow(2).sum() for p in params).backward()
        opt.step()
    tensors, groups = optimizer_state(opt)
    tensors = {k: v.clone() for k, v in tensors.items()}  # as read from a file: not the live moments
    copy = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = torch.optim.Adam(copy, lr=0.5)
    load_optimizer_state(opt2, tensors, groups)
    for a, b in ((opt, params), (opt2, copy)):
        a.zero_grad()
        sum(p.pow(2).sum() for p in b).backward()
        a.step()
    assert all(torch.equal(p, q) for p, q in zip(params, copy))


@pytest.mark.parametrize("stop_after", [1, 2])  # epoch 1 improves; epoch 2 does not (its best weights are apart)
def test_the_next_token_loop_resumes_at_improving_and_non_improving_epochs(tmp_path, stop_after):
    from cvfp.config import Phase2Config
    from cvfp.training.next_token import train_next_token

    def run(store, stop=None):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 3)
        data = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
        targets = torch.arange(16) % 3
        val_losses = iter([3.0, 4.0, 2.0, 5.0][len(saved_epochs(store)) :])

        def batches(generator):
            for s in range(0, 16, 4):
                yield torch.nn.functional.cross_entropy(model(data[s : s + 4]), targets[s : s + 4]), 4

        def on_record(record):
            if stop is not None and record["epoch"] == stop and record["epoch"] > len(saved_epochs(store)):
                raise KeyboardInterrupt

        cfg = Phase2Config(epochs=4, patience=0, restore_best=True, adam="reference")
        metrics = lambda: {"loss": next(val_losses), "ppl": 1.0, "acc": 0.0}
        snapshot = lambda: {k: v.detach().clone() for k, v in model.state_dict().items()}
        result = train_next_token(model, list(model.parameters()), batches, metrics, snapshot, cfg,
                                  on_record=on_record, progress=False, state=store)  # fmt: skip
        return result, model

    def saved_epochs(store):
        loaded = store.load("phase2") if store is not None else None
        return loaded[1]["epochs"] if loaded else []

    reference, ref_model = run(None)
    store = StateStore(tmp_path / "resume")
    with pytest.raises(KeyboardInterrupt):
        run(store, stop=stop_after + 1)
    assert [e["epoch"] for e in saved_epochs(store)] == list(range(1, stop_after + 1))
    resumed, model = run(store)
    assert resumed.best_epoch == reference.best_epoch == 3
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref_model.state_dict().values()))
    assert all(torch.equal(resumed.best_state[k], reference.best_state[k]) for k in reference.best_state)
