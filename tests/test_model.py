import pytest
import torch

from cvfp.cli import main
from cvfp.config import ModelConfig
from cvfp.models import build_model


@pytest.mark.parametrize(
    "arch, context_block, token_block",
    [("e", 7_091_712, 7_091_712), ("equal-decrease", 15_394_304, 8_566_272)],
)
def test_seed_parameter_counts(arch, context_block, token_block):
    model = build_model(ModelConfig(arch=arch), torch.zeros(50257, 768))
    counts = model.parameter_counts()
    assert counts["context_block"] == context_block
    assert counts["token_block"] == token_block
    assert counts["head"] == 38_647_633
    assert counts["embedding_frozen"] == 38_597_376


def test_describe_prints_seed_counts(capsys):
    assert main(["describe", "--preset", "seed", "--embeddings", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert "7,091,712" in out and "38,647,633" in out
    assert main(["describe", "--preset", "seed", "--embeddings", "gpt2", "--arch", "equal-decrease"]) == 0
    out = capsys.readouterr().out
    assert "15,394,304" in out and "8,566,272" in out


def test_tied_head_has_no_parameters_and_scores_with_the_frozen_table():
    table = torch.randn(30, 8, generator=torch.Generator().manual_seed(0))
    model = build_model(ModelConfig(num_layers=2, context_dim=6, embed_dim=8, vocab_size=30, head="tied"), table)
    assert model.parameter_counts()["head"] == 0
    x = torch.randn(3, 8)
    contexts = [torch.randn(3, 6), torch.randn(3, 6)]
    logits = model.token_logits(contexts, x)
    features = model.token_features(contexts, x)
    for v in (0, 17, 29):  # token v's logit: the features against row v of the frozen table, no bias
        torch.testing.assert_close(logits[:, v], features @ table[v])
    logits.sum().backward()
    assert model.embedding.grad is None and all(p.grad is not None for p in model.token_layers.parameters())


def test_embedding_shape_mismatch_is_explained():
    with pytest.raises(ValueError, match="expects \\(vocab_size=50, embed_dim=8\\)"):
        build_model(ModelConfig(embed_dim=8, vocab_size=50), torch.zeros(50, 9))


def small_model(arch="e", k=1, seed=0):
    cfg = ModelConfig(arch=arch, num_layers=3, context_dim=10, embed_dim=6, vocab_size=40, input_tokens=k)
    return build_model(cfg, torch.randn(40, 6, generator=torch.Generator().manual_seed(1)), seed=seed)


def test_step_inputs_are_oldest_first_and_zero_padded():
    model = small_model(k=3)
    ids = torch.tensor([5, 7, 9, 11])
    x = model.step_inputs(ids, 0, 4)
    emb = model.embed(ids)
    assert x.shape == (4, 18)
    assert torch.equal(x[0, :12], torch.zeros(12)) and torch.equal(x[0, 12:], emb[0])
    assert torch.equal(x[3], torch.cat([emb[1], emb[2], emb[3]]))
    assert torch.equal(model.step_inputs(ids, 2, 4), x[2:4])


@pytest.mark.parametrize("arch", ["e", "equal-decrease"])
@pytest.mark.parametrize("k", [1, 2])
def test_shapes_and_widths(arch, k):
    model = small_model(arch, k)
    c = torch.zeros(4, 10)
    x = model.step_inputs(torch.arange(4), 0, 4)
    layers = model.context_step(c, x)
    assert [t.shape[1] for t in layers] == model.context_widths
    assert layers[-1].shape == (4, 10)
    flat = model.flatten_contexts(layers)
    assert all(torch.equal(a, b) for a, b in zip(model.split_contexts(flat), layers))
    assert model.token_logits(layers, x).shape == (4, 40)


def _recurrent_logits(model, ids):
    c = torch.zeros(1, model.cfg.context_dim)
    x = model.step_inputs(ids)
    out = []
    for i in range(len(ids)):
        c, logits = model.step(c, x[i : i + 1])
        out.append(logits)
    return torch.cat(out)


@pytest.mark.parametrize("arch", ["e", "equal-decrease"])
def test_causality_output_t_ignores_later_tokens(arch):
    model = small_model(arch, k=2)
    with torch.no_grad():
        model.head.weight.normal_()
    ids = torch.tensor([1, 4, 9, 16, 25, 36, 2, 3])
    changed = ids.clone()
    changed[5:] = torch.tensor([0, 0, 0])
    a, b = _recurrent_logits(model, ids), _recurrent_logits(model, changed)
    assert torch.equal(a[:5], b[:5])
    assert not torch.allclose(a[5:], b[5:])
    # Gradient form: output t does not depend on the embedding of token t+1.
    emb = model.embed(ids).requires_grad_(True)
    c = torch.zeros(1, 10)
    x = torch.cat([torch.cat([torch.zeros(1, 6), emb[:-1]]), emb], dim=1)
    outs = []
    for i in range(len(ids)):
        c, logits = model.step(c, x[i : i + 1])
        outs.append(logits)
    (grad,) = torch.autograd.grad(outs[3].sum(), emb)
    assert torch.count_nonzero(grad[4:]) == 0 and torch.count_nonzero(grad[:4]) > 0


def test_effective_rank_on_known_spectra():
    """algorithm §5: ER = exp(entropy of S / sum S), as a fraction of the width."""
    import math

    from cvfp.metrics import effective_rank_centered, effective_rank_uncentred

    g = torch.Generator().manual_seed(0)
    assert effective_rank_uncentred(torch.eye(6), 100, g) == pytest.approx(1.0)  # all singular values equal
    rank1 = torch.outer(torch.arange(1.0, 9.0), torch.tensor([1.0, -2.0, 0.5, 3.0]))
    assert effective_rank_uncentred(rank1, 100, g) == pytest.approx(1 / 4)
    spectrum = torch.zeros(5, 4)
    spectrum[0, 0], spectrum[1, 1] = 3.0, 1.0  # S = (3, 1): p = (0.75, 0.25)
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))) / 4
    assert effective_rank_uncentred(spectrum, 100, g) == pytest.approx(expected)
    # Centred: rows already centred with orthogonal columns of norms 2*sqrt(2) and sqrt(2).
    centred = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]]).flip(1)
    p = (2 / 3, 1 / 3)
    value, rows = effective_rank_centered(centred, 100, g)
    assert value == pytest.approx(math.exp(-sum(q * math.log(q) for q in p)) / 2) and rows == 4
    shifted = centred + torch.tensor([5.0, -3.0])  # a common offset: centring removes it, the seed's ER does not
    assert effective_rank_centered(shifted, 100, g)[0] == pytest.approx(value)
    assert effective_rank_uncentred(shifted, 100, g) != pytest.approx(effective_rank_uncentred(centred, 100, g))
    assert effective_rank_centered(torch.randn(50, 3, generator=g), 10, g)[1] == 10  # a fixed row count


def test_describe_previews_exactly_the_model_a_train_with_the_same_flags_builds(tiny_corpus, cache_dir, tmp_path,
                                                                                capsys):  # fmt: skip
    from conftest import tiny_cli_args

    from cvfp.io.rundir import read_json

    flags = tiny_cli_args(tiny_corpus, cache_dir)
    assert main(["describe", *flags]) == 0
    trainable = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("trainable"))
    assert main(["train", *flags, "--samples", "4", "--out", str(tmp_path / "run")]) == 0
    summary = read_json(tmp_path / "run" / "summary.json")
    assert int(trainable.split()[-1].replace(",", "")) == summary["trainable_parameters"]
