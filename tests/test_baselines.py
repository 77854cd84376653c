"""Baselines on the same tokens: they learn, they are causal, they are sized and counted right."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cvfp.cli import main
from cvfp.config import ModelConfig, Phase2Config
from cvfp.models import build_model, e_design_body_parameters
from cvfp.models.lstm import lstm_body_parameters
from cvfp.models.ngram import KneserNey
from cvfp.models.transformer import transformer_body_parameters
from cvfp.scoring import score_sequence_model
from cvfp.training.point import RunOptions, train_point

V, E = 40, 12


def tiny_model(arch, **kw):
    cfg = ModelConfig(arch=arch, num_layers=2, context_dim=16, embed_dim=E, vocab_size=V, transformer_window=8, **kw)
    table = torch.randn(V, E, generator=torch.Generator().manual_seed(0))
    model = build_model(cfg, table, seed=1)
    with torch.no_grad():  # a zero head predicts uniformly whatever the body does: give it weights
        model.head.weight.normal_(generator=torch.Generator().manual_seed(2))
    return model.eval()


@pytest.mark.parametrize("arch", ["e", "equal-decrease", "random-context", "e-rnn", "lstm", "transformer", "ngram"])
def test_every_architecture_learns_on_a_tiny_corpus(tiny_cfg, tmp_path, cache_dir, arch):
    cfg = tiny_cfg.override([f'model.arch="{arch}"', "phase2.epochs=3", "phase2.patience=0",
                             "phase2.learning_rate=0.01", "model.transformer_window=32"])  # fmt: skip
    summary = train_point(cfg, 12, tmp_path / arch, options=RunOptions(cache_dir=cache_dir, progress=False))
    assert summary["arch"] == arch and np.isfinite(summary["val_loss"])
    assert summary["val_ppl"] < 0.5 * cfg.model.vocab_size  # far better than uniform over the 50,257 tokens
    if arch == "ngram":
        assert summary["details"]["order"] in (3, 4, 5) and summary["train_flops"] == 0
        assert (tmp_path / arch / "checkpoint" / "model.safetensors").exists()  # its stream and order
        return
    train_ppl = [e["train_ppl"] for e in summary["epochs"]]
    assert train_ppl[-1] < train_ppl[0]  # the training loss falls
    assert summary["train_flops"] > 0 and summary["trainable_parameters"] > 0
    assert (tmp_path / arch / "checkpoint" / "model.safetensors").exists()


@pytest.mark.parametrize("arch", ["e", "e-rnn", "lstm", "transformer"])
def test_changing_a_future_token_changes_no_earlier_logit(arch):
    ids = torch.randint(0, V, (30,), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    t = 17
    changed[t] = (ids[t] + 1) % V
    if arch == "e":
        from cvfp.training.caches import sequential_cache

        model = tiny_model(arch)

        def logits(x):
            cache = sequential_cache(model, x)
            return model.token_logits(cache.layers(0, len(cache)), model.step_inputs(x, 0, 29))
    else:
        model = tiny_model(arch)

        def logits(x):
            with torch.no_grad():
                if arch == "transformer":  # scoring (sliding windows) and training (windows) paths both
                    scored = torch.cat([lg for _, lg in sorted(model.score_logits(x), key=lambda p: p[0])])
                    trained = model.span_logits(x, 0, 29, None, training=True)[0]
                    return torch.cat([scored, trained], dim=1)
                return model.span_logits(x, 0, 29, None, training=False)[0]

    a, b = logits(ids), logits(changed)
    assert torch.equal(a[:t], b[:t])  # positions before t never see token t
    assert not torch.allclose(a[t], b[t])  # position t reads it


def test_lstm_scoring_equals_a_token_by_token_loop():
    model = tiny_model("lstm")
    ids = torch.randint(0, V, (50,), generator=torch.Generator().manual_seed(4))
    fast = score_sequence_model(model, ids).metrics()
    with torch.no_grad():
        state, nats = None, 0.0
        for i in range(49):
            x = model.embed(ids[i : i + 1])
            out, state = model.lstm(x[None], state)
            logits = model.head(model.norm(x + model.proj(out[0])))  # the identity path (baseline_identity)
            nats += F.cross_entropy(logits, ids[i + 1 : i + 2], reduction="sum").item()
    assert fast["loss"] == pytest.approx(nats / 49, rel=1e-5) and fast["tokens"] == 49


def test_transformer_sliding_scoring_gives_each_token_its_stated_context():
    """Window W = 8, stride 4: each position is scored once, from a window that starts
    at most W-1 and (after the first window) at least W/2 tokens before it."""
    model = tiny_model("transformer")
    ids = torch.randint(0, V, (31,), generator=torch.Generator().manual_seed(5))
    seen = {}
    with torch.no_grad():
        for first, logits in model.score_logits(ids):
            for j in range(logits.shape[0]):
                seen[first + j] = logits[j]
        assert sorted(seen) == list(range(30))
        for p in range(30):
            start = 0 if p < 8 else ((p - 8) // 4 + 1) * 4  # the window that scores p
            assert 0 <= p - start <= 7 and (p < 8 or p - start >= 4)
            reference = model.windows_logits(ids[start : p + 1][None])[0, -1]
            torch.testing.assert_close(seen[p], reference, rtol=1e-4, atol=1e-5)


def test_kneser_ney_distributions_sum_to_one():
    rng = np.random.default_rng(0)
    stream = rng.integers(0, 25, 400)
    for order in (1, 2, 3, 5):
        model = KneserNey(stream, order, vocab_size=30)
        for history in [(), tuple(stream[10:14]), (3, 4), (26, 27, 28, 29), tuple(stream[:2])]:
            dist = model.distribution(history)
            assert dist.sum() == pytest.approx(1.0, abs=1e-9) and (dist > 0).all()
            assert model.prob(history, 7) == pytest.approx(dist[7])
    # Counts from a repetitive stream: the higher order must predict it far better.
    cyclic = np.tile(np.arange(10), 50)
    low, high = KneserNey(cyclic, 1, 30), KneserNey(cyclic, 3, 30)
    assert high.score_rows(cyclic[:60])[0].sum() < 0.2 * low.score_rows(cyclic[:60])[0].sum()


def test_baseline_sizes_match_the_e_design_and_their_formulas():
    for layers, context, embed in ((2, 256, 576), (6, 768, 768), (1, 64, 48)):
        cfg = ModelConfig(num_layers=layers, context_dim=context, embed_dim=embed, vocab_size=7)
        target = e_design_body_parameters(cfg)
        for arch, formula in (("lstm", lstm_body_parameters), ("transformer", transformer_body_parameters)):
            model = build_model(cfg.replace(arch=arch), torch.zeros(7, embed), seed=0)
            width = model.lstm.hidden_size if arch == "lstm" else model.inp.out_features
            assert model.body_parameters() == formula(cfg.replace(arch=arch), width)
            assert abs(model.body_parameters() / target - 1) < 0.10, (arch, layers, context)
            assert model.parameter_counts()["head"] == embed * 7 + 7  # the same untied head as CVFP


def test_describe_prints_the_built_models_counts(capsys):
    assert main(["describe", "--arch", "lstm", "--layers", "2", "--context-dim", "256"]) == 0  # the quick preset
    out = capsys.readouterr().out
    cfg = ModelConfig(arch="lstm", num_layers=2, context_dim=256, embed_dim=576, vocab_size=49152)
    model = build_model(cfg, torch.zeros(49152, 576), seed=0)
    assert f"{model.body_parameters():,}" in out and f"{e_design_body_parameters(cfg):,}" in out


def test_cli_compare_every_architecture(tiny_corpus, tmp_path, cache_dir):
    out = tmp_path / "c"
    argv = ["compare", "--archs", "e,equal-decrease,random-context,lstm,transformer,ngram", "--samples", "4,8,12",
            "--corpus", str(tiny_corpus), "--embeddings", "random-16", "--layers", "1", "--context-dim", "8",
            "--device", "cpu", "--no-progress", "--cache-dir", str(cache_dir), "--out", str(out), "--protocol", "seed",
            "--set", "phase1.max_iterations=3", "--set", "phase2.epochs=2", "--set", "model.transformer_window=16"]  # fmt: skip
    assert main(argv) == 0
    text = (out / "compare.md").read_text()
    for label in ("E design (CVFP)", "random frozen ContextBlock", "LSTM", "Transformer", "Kneser-Ney", "alpha"):
        assert label in text
    assert "The original's comparison" in text and (out / "compare.png").stat().st_size > 1000
    stored = json.loads((out / "lstm" / "results.json").read_text())
    assert stored["points"][0]["arch"] == "lstm" and stored["points"][0]["details"]["width"] > 0


def test_compare_search_tunes_every_trained_model_on_validation(tiny_corpus, tmp_path, cache_dir):
    out = tmp_path / "c"
    argv = ["compare", "--archs", "e,lstm,ngram", "--samples", "4,8", "--search", "phase2.learning_rate=0.001,0.02",
            "--corpus", str(tiny_corpus), "--embeddings", "random-16", "--layers", "1", "--context-dim", "8",
            "--device", "cpu", "--no-progress", "--cache-dir", str(cache_dir), "--out", str(out), "--protocol", "seed",
            "--set", "phase1.max_iterations=3", "--set", "phase2.epochs=2"]  # fmt: skip
    assert main(argv) == 0
    text = (out / "compare.md").read_text()
    assert "## Tuned on validation" in text and "Kneser-Ney" not in text.split("## Tuned on validation")[1]
    for arch in ("e", "lstm"):
        grid = json.loads((out / arch / "search" / "grid.json").read_text())
        losses = {c["cell"]: c["val_loss"]["mean"] for c in grid["cells"]}
        chosen = min(losses, key=losses.get)
        tuned = text.split("## Tuned on validation")[1]
        assert chosen.split("=")[1] in tuned
        # Beside the tuned cell: the same model under the shared budget at the search size (8 samples).
        same = json.loads((out / arch / "results.json").read_text())["sizes"][-1]["val_ppl"]["mean"]
        label = {"e": "| E design", "lstm": "| LSTM"}[arch]
        row = next(line for line in tuned.splitlines() if line.startswith(label))
        assert chosen.split("=")[1] in row
        assert row.rstrip(" |").endswith(f"{same:.1f}")
    assert not (out / "ngram" / "search").exists()


@pytest.mark.parametrize("arch", ["e-rnn", "lstm", "transformer", "ngram"])
def test_baseline_checkpoint_is_scored_by_cvfp_eval(tiny_cfg, tmp_path, cache_dir, capsys, caplog, arch):
    """A baseline's checkpoint reloads and `cvfp eval` reproduces the run's validation PPL (the n-gram
    model's checkpoint: its train stream and order, recounted)."""
    from cvfp.inference import CVFPLM, load_lm
    from cvfp.io.checkpoint import CheckpointError

    cfg = tiny_cfg.override([f'model.arch="{arch}"', "model.transformer_window=32", "phase2.epochs=2"])
    summary = train_point(cfg, 10, tmp_path / "run", options=RunOptions(cache_dir=cache_dir, progress=False))
    argv = ["eval", "--checkpoint", str(tmp_path / "run" / "checkpoint"), "--corpus", cfg.data.corpus,
            "--samples", "10", "--protocol", "seed", "--cache-dir", str(cache_dir)]  # fmt: skip
    assert main(argv) == 0
    assert f"PPL {summary['val_ppl']:.2f}" in capsys.readouterr().out
    assert load_lm(tmp_path / "run" / "checkpoint").model.cfg.arch == arch
    with pytest.raises(CheckpointError, match="baseline, not a CVFP model"):
        CVFPLM.from_checkpoint(tmp_path / "run" / "checkpoint")
    if arch == "ngram":
        assert load_lm(tmp_path / "run" / "checkpoint").model.order == summary["details"]["order"]
        assert main(["export", "--checkpoint", str(tmp_path / "run" / "checkpoint"), "--out", str(tmp_path / "x")]) == 2
        assert "has no Hugging Face form" in caplog.text


def test_lstm_trains_on_every_position_once_per_epoch_in_parallel_segments():
    from cvfp.models.sequence import STREAMS as LSTM_STREAMS

    model = tiny_model("lstm")
    ids = torch.arange(203) % V  # target of position p is ids[p + 1]: recognisable
    positions = []
    for features, targets in model.train_batches(ids, 32):
        assert features.shape == (targets.shape[0], model.cfg.embed_dim) and targets.shape[0] <= 32
        positions += [int(t) for t in targets]
    seg = 202 // LSTM_STREAMS
    expected = sorted(int(ids[p + 1]) for p in range(LSTM_STREAMS * seg))
    assert sorted(positions) == expected  # every trained position once, the last 202 mod 8 left out


def _baseline(arch: str, **fields) -> torch.nn.Module:
    cfg = ModelConfig(**{"arch": arch, "num_layers": 2, "context_dim": 8, "embed_dim": 6, "vocab_size": 30,
                         "transformer_window": 8, **fields})  # fmt: skip
    return build_model(cfg, torch.randn(30, 6, generator=torch.Generator().manual_seed(0)), seed=3)


def test_the_lstm_by_hand_with_its_forget_bias_and_identity_path():
    """One layer (the default), forget gates' biases summing to 1, and the head input LN(x + W h + b): the
    LSTM equations written out, step by step, give the same features."""
    model = _baseline("lstm")
    lstm, h_size = model.lstm, model.width
    assert lstm.num_layers == 1
    assert torch.all(lstm.bias_ih_l0[h_size : 2 * h_size] == 1) and torch.all(lstm.bias_hh_l0[h_size : 2 * h_size] == 0)
    ids = torch.randint(0, 30, (12,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features, _ = model.span_features(ids, 0, 11, None, training=False)
        x = model.embed(ids[:11])
        h, c, rows = torch.zeros(h_size), torch.zeros(h_size), []
        for t in range(11):
            z = lstm.weight_ih_l0 @ x[t] + lstm.bias_ih_l0 + lstm.weight_hh_l0 @ h + lstm.bias_hh_l0
            i, f, g, o = z.split(h_size)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            rows.append(F.layer_norm(x[t] + model.proj(h), (6,), model.norm.weight, model.norm.bias))
    assert torch.allclose(features, torch.stack(rows), atol=1e-5)
    old = _baseline("lstm", lstm_layers=None, lstm_forget_bias=None)  # cvfp before: num_layers, uniform biases
    assert old.lstm.num_layers == 2 and not torch.all(old.lstm.bias_ih_l0[old.width : 2 * old.width] == 1)


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_the_identity_path_carries_the_token_when_the_body_is_silent(arch):
    """With the body's output projection zeroed, the head reads LN(x) through the identity path, and nothing
    (LN of zeros: the LayerNorm's bias, 0) without it."""
    ids = torch.randint(0, 30, (9,), generator=torch.Generator().manual_seed(2))
    for identity in (True, False):
        model = _baseline(arch, baseline_identity=identity)
        with torch.no_grad():
            model.proj.weight.zero_()
            model.proj.bias.zero_()
            features = next(iter(model.score_features(ids)))[1]
            x = model.embed(ids[: len(features)])
        expected = F.layer_norm(x, (6,)) if identity else torch.zeros_like(x)
        assert torch.allclose(features, expected, atol=1e-5), identity


def test_a_baseline_config_of_older_cvfp_reads_as_it_ran(tmp_path):
    from cvfp.config import RunConfig
    from cvfp.io.rundir import comparable

    for arch in ("lstm", "transformer", "e"):
        old = RunConfig().to_dict()
        old["model"]["arch"] = arch
        for key in ("baseline_identity", "lstm_layers", "lstm_forget_bias"):
            del old["model"][key]
        (tmp_path / "config.json").write_text(json.dumps(old), encoding="utf-8")
        cfg = RunConfig.from_file(tmp_path / "config.json")
        assert (cfg.model.baseline_identity, cfg.model.lstm_layers, cfg.model.lstm_forget_bias) == (False, None, None)
        # A CVFP design never read them: its old folder is the same run as today's config; a baseline's is not.
        today = RunConfig().replace(model=RunConfig().model.replace(arch=arch))
        assert (comparable(cfg) == comparable(today)) == (arch == "e")


@pytest.mark.parametrize("window", [8, 7])
def test_the_transformer_trains_each_target_in_the_window_it_is_scored_in(window):
    """Overlapping training windows: every position's training features equal its scoring features, whatever
    the batch boundaries; disjoint windows (cvfp before) give a position at a window's start no context."""
    model = _baseline("transformer", transformer_window=window)
    ids = torch.randint(0, 30, (40,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        scored = torch.cat([f for _, f in sorted(model.score_features(ids), key=lambda job: job[0])])
        trained = torch.cat([f for f, _ in model.train_batches(ids, 11)])
        assert trained.shape == scored.shape == (39, 6)
        assert torch.allclose(trained, scored, atol=1e-5)
        disjoint = _baseline("transformer", transformer_window=window, transformer_train_windows="disjoint")
        disjoint.load_state_dict(model.state_dict())
        old = torch.cat([f for f, _ in disjoint.train_batches(ids, 11)])
    assert not torch.allclose(old, scored, atol=1e-5)
    assert model.body_tokens_per_target() == 2 and disjoint.body_tokens_per_target() == 1


def test_a_shuffled_lstm_epoch_reads_a_rotation_of_the_stream_with_its_state_carried():
    """phase2.shuffle for the LSTM: its streams start at a drawn rotation, and each stream's features are
    the LSTM run over its rotated segment in one go (the state carried from step to step, as without it)."""
    from cvfp.data.order import epoch_generator
    from cvfp.models.sequence import STREAMS as LSTM_STREAMS

    model = _baseline("lstm")
    ids = torch.randint(0, 30, (203,), generator=torch.Generator().manual_seed(4))
    n, seg = 202, 202 // LSTM_STREAMS
    shuffled = Phase2Config(shuffle=True)
    shift = int(torch.randint(n, (1,), generator=epoch_generator(shuffled, 7, 2)))
    with torch.no_grad():
        steps = list(model.train_batches(ids, 32, epoch_generator(shuffled, 7, 2)))
        features = torch.cat([f.reshape(LSTM_STREAMS, -1, 6) for f, _ in steps], 1)  # (S, seg, E)
        targets = torch.cat([t.reshape(LSTM_STREAMS, -1) for _, t in steps], 1)
        for k in range(LSTM_STREAMS):
            pos = (k * seg + shift + torch.arange(seg)) % n
            x = model.embed(ids[pos])[None]
            out, _ = model.lstm(x)
            assert torch.allclose(features[k], model.output(x[0], out[0]), atol=1e-5)
            assert torch.equal(targets[k], ids[pos + 1])
        plain = torch.cat([t for _, t in model.train_batches(ids, 32)])
    assert shift % seg != 0 and not torch.equal(torch.cat([t for _, t in steps]), plain)


def test_a_shuffled_transformer_epoch_visits_every_span_once_in_a_seeded_order():
    from cvfp.data.order import epoch_generator

    model = _baseline("transformer")
    ids = torch.randint(0, 30, (60,), generator=torch.Generator().manual_seed(5))
    cfg = Phase2Config(shuffle=True)
    with torch.no_grad():
        plain = [(f, t) for f, t in model.train_batches(ids, 11)]
        first = [(f, t) for f, t in model.train_batches(ids, 11, epoch_generator(cfg, 0, 1))]
        again = [t for _, t in model.train_batches(ids, 11, epoch_generator(cfg, 0, 1))]
        other = [t for _, t in model.train_batches(ids, 11, epoch_generator(cfg, 0, 2))]
    by_targets = {tuple(t.tolist()): f for f, t in plain}
    assert sorted(tuple(t.tolist()) for _, t in first) == sorted(by_targets)  # each span once
    for f, t in first:  # a stateless body: a span's features do not depend on the order
        assert torch.allclose(f, by_targets[tuple(t.tolist())], atol=1e-6)
    assert [torch.equal(a, b) for (_, a), b in zip(first, again)] == [True] * len(first)  # seeded
    assert any(not torch.equal(a, b) for (_, a), b in zip(first, other))  # another epoch, another order
    assert any(not torch.equal(a, b) for (_, a), (_, b) in zip(first, plain))


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
def test_match_compute_sizes_the_body_to_the_e_designs_training_flops_per_token(arch):
    """model.baseline_match = compute: the baseline's body FLOPs per trained target per epoch (its own FLOP count,
    ``training.flops``) are the closest its width allows to the E design's whole-run body FLOPs (``cvfp_flops``
    with Phase 1 at 1 + match_phase1_sweeps x epochs iterations) divided by the epochs and tokens."""
    from cvfp.models.model import CVFPModel
    from cvfp.models.registry import E_DESIGN
    from cvfp.training.flops import cvfp_flops, sequence_flops

    cfg = ModelConfig(arch=arch, num_layers=2, context_dim=64, embed_dim=96, vocab_size=2, head="tied",
                      transformer_window=32, baseline_match="compute", match_phase1_sweeps=1.4)  # fmt: skip
    counts = CVFPModel(cfg.replace(arch="e"), torch.zeros(2, 96), E_DESIGN).parameter_counts()
    tokens, epochs = 1000, 5
    e_body = cvfp_flops(counts["context_block"], counts["token_block"], tokens, 1 + 7, True, epochs) / (epochs * tokens)
    table = torch.zeros(2, 96)

    def per_target(model):
        factor = model.body_tokens_per_target()
        flops = sequence_flops(
            model.body_parameters() * factor, tokens, epochs, model.attention_flops_per_token() * factor
        )
        return flops / (epochs * tokens)

    matched = build_model(cfg, table)
    step = 1 if arch == "lstm" else cfg.transformer_heads
    wider = type(matched)(cfg, table, matched.width + step)
    narrower = type(matched)(cfg, table, matched.width - step)
    gap = abs(per_target(matched) - e_body)
    assert gap <= abs(per_target(wider) - e_body) and gap <= abs(per_target(narrower) - e_body)
    assert gap / e_body < 0.05
    by_parameters = build_model(cfg.replace(baseline_match="parameters"), table)
    assert matched.width != by_parameters.width  # the parameter match is another size


def _cell_rnn_and_e_design():
    """The RNN-trained cell and an E design with the same block weights (and a head with weights)."""
    from cvfp.models.model import CVFPModel
    from cvfp.models.registry import E_DESIGN

    cfg = ModelConfig(arch="e-rnn", num_layers=2, context_dim=8, embed_dim=6, vocab_size=30)
    table = torch.randn(30, 6, generator=torch.Generator().manual_seed(0))
    rnn = build_model(cfg, table, seed=3)
    with torch.no_grad():
        rnn.head.weight.normal_(generator=torch.Generator().manual_seed(4))
    e = CVFPModel(cfg.replace(arch="e"), table, E_DESIGN, seed=3)
    e.load_state_dict({**{k[len("cell.") :]: v for k, v in rnn.state_dict().items() if k.startswith("cell.")},
                       **{k: v for k, v in rnn.state_dict().items() if k.startswith("head.")}})  # fmt: skip
    return rnn, e


def test_the_rnn_trained_cell_is_the_e_designs_recurrence():
    """Its scoring features are the E design's on the true sequential recurrence (same weights), and its blocks
    start where the E design's do for the same seed."""
    from cvfp.training.caches import sequential_cache

    rnn, e = _cell_rnn_and_e_design()
    fresh = build_model(rnn.cfg, torch.randn(30, 6), seed=3)
    from cvfp.models.model import CVFPModel
    from cvfp.models.registry import E_DESIGN

    e_init = CVFPModel(rnn.cfg.replace(arch="e"), torch.randn(30, 6), E_DESIGN, seed=3)
    assert torch.equal(fresh.cell.context_layers[0].fc.weight, e_init.context_layers[0].fc.weight)
    ids = torch.randint(0, 30, (50,), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        cache = sequential_cache(e, ids)
        reference = e.token_features(cache.layers(0, len(cache)), e.step_inputs(ids, 0, 49))
        scored = torch.cat([f for _, f in sorted(rnn.score_features(ids), key=lambda job: job[0])])
        trained = torch.cat([f.reshape(-1, 6) for f, _ in rnn.train_batches(ids[:17], 16)])  # 8 streams of 2
    assert torch.allclose(scored, reference, atol=1e-5)
    segments = torch.cat([e.token_features(sequential_cache(e, ids[s : s + 3]).layers(0, 2), e.step_inputs(ids[s : s + 3], 0, 2))
                          for s in range(0, 16, 2)])  # fmt: skip
    assert torch.allclose(trained, segments, atol=1e-5)  # each training segment from a zero context


def test_truncated_bptt_with_a_window_as_long_as_the_segment_is_full_backpropagation():
    """W >= T: the gradient of a training step equals that of the plain loss over each whole segment by autograd
    through the plain loop; W < T: the same forward (the context carried) but another, truncated gradient."""
    rnn, _ = _cell_rnn_and_e_design()
    ids = torch.randint(0, 30, (41,), generator=torch.Generator().manual_seed(6))  # 8 streams of 5 targets

    def gradients(loss):
        rnn.zero_grad()
        loss.backward()
        return [p.grad.clone() for p in rnn.parameters() if p.requires_grad]

    def step_loss(batch_size):
        return sum(rnn.head_loss(f, t) * len(t) for f, t in rnn.train_batches(ids, batch_size)) / 40

    plain = 0
    for k in range(8):  # the plain loop over each segment, from a zero context
        c, seg = torch.zeros(1, 8), ids[5 * k : 5 * k + 6]
        for j in range(5):
            x = rnn.embed(seg[j : j + 1])
            contexts = rnn.cell.context_step(c, x)
            plain = plain + rnn.head_loss(rnn.cell.token_features(contexts, x, previous=c), seg[j + 1 : j + 2])
            c = contexts[-1]
    reference = gradients(plain / 40)
    full = gradients(step_loss(40))  # one step of W = 5 per stream: the whole segment
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full, reference))
    truncated = gradients(step_loss(16))  # windows of 2 tokens: the context's gradient cut between them
    assert step_loss(16).item() == pytest.approx((plain / 40).item(), rel=1e-6)
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(truncated, reference))
