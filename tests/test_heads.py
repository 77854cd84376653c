"""The output heads (cvfp.models.heads): the adaptive softmax is an exact distribution over the vocabulary,
its scores are its own log-probabilities, every architecture trains with every head, and a model with an
adaptive head survives a checkpoint, an export and seeded generation unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from cvfp.config import ModelConfig
from cvfp.models import build_model
from cvfp.models.heads import AdaptiveHead, head_parameters
from cvfp.training.point import RunOptions, train_point

V, E = 300, 12


def adaptive_head(seed: int = 0) -> AdaptiveHead:
    head = AdaptiveHead(E, V, (20, 100), 2.0, torch.Generator().manual_seed(seed))
    with torch.no_grad():  # away from the zero init, so that the distribution is not trivial
        for p in head.parameters():
            p.normal_(0, 0.5, generator=torch.Generator().manual_seed(seed + 1))
    return head


def test_the_adaptive_distribution_sums_to_one_over_the_vocabulary():
    head = adaptive_head()
    head.order_by_frequency(torch.randint(0, V, (2000,), generator=torch.Generator().manual_seed(2)))
    t = torch.randn(17, E, generator=torch.Generator().manual_seed(3))
    log_probs = head.log_probs(t)
    assert log_probs.shape == (17, V)
    torch.testing.assert_close(torch.logsumexp(log_probs, dim=-1), torch.zeros(17), atol=1e-5, rtol=0)


def test_scores_are_the_modules_own_log_probabilities_and_the_full_argmax():
    head = adaptive_head()
    stream = torch.randint(0, V, (3000,), generator=torch.Generator().manual_seed(4)) ** 2 % V  # skewed counts
    head.order_by_frequency(stream)
    t = torch.randn(64, E, generator=torch.Generator().manual_seed(5))
    log_probs = head.log_probs(t)
    targets = torch.randint(0, V, (64,), generator=torch.Generator().manual_seed(6))
    targets[:8] = log_probs[:8].argmax(-1)  # some hits, whatever the draw
    nats, hits = head.row_scores(t, targets)
    torch.testing.assert_close(nats, -log_probs.gather(1, targets[:, None])[:, 0], atol=1e-5, rtol=1e-5)
    assert torch.equal(hits, log_probs.argmax(-1) == targets) and hits.sum() >= 8
    assert head.loss(t, targets).item() == pytest.approx(nats.mean().item(), rel=1e-5)
    with torch.no_grad():  # clusters made likely: the best head entry of many rows is a cluster, read in full
        head.head.bias[head.shortlist_size :] += 6
    log_probs = head.log_probs(t)
    targets[:8] = log_probs[:8].argmax(-1)
    assert (head.rank[log_probs.argmax(-1)] >= head.shortlist_size).sum() >= 8  # tail tokens win those rows
    nats, hits = head.row_scores(t, targets)
    torch.testing.assert_close(nats, -log_probs.gather(1, targets[:, None])[:, 0], atol=1e-5, rtol=1e-5)
    assert torch.equal(hits, log_probs.argmax(-1) == targets) and hits.sum() >= 8


def test_an_adaptive_head_starts_at_the_uniform_distribution_like_the_full_head():
    head = AdaptiveHead(E, V, (20, 100), 2.0, torch.Generator().manual_seed(0))
    log_probs = head.log_probs(torch.randn(5, E, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(log_probs, torch.full((5, V), -math.log(V)), atol=1e-5, rtol=0)


def test_the_clusters_follow_the_train_streams_frequencies():
    head = adaptive_head()
    stream = torch.tensor([7] * 50 + [3] * 20 + [250] * 10 + [9] * 10)
    head.order_by_frequency(stream)
    assert head.rank[7] == 0 and head.rank[3] == 1 and head.rank[9] == 2 and head.rank[250] == 3  # ties by id
    assert sorted(head.rank.tolist()) == list(range(V))


def test_head_parameter_counts_match_the_built_models():
    for head in ("full", "tied", "adaptive"):
        cfg = ModelConfig(num_layers=1, context_dim=8, embed_dim=E, vocab_size=V, head=head, adaptive_cutoffs=(20, 100),
                          adaptive_div_value=2.0)  # fmt: skip
        model = build_model(cfg, torch.randn(V, E), seed=0)
        assert model.parameter_counts()["head"] == head_parameters(cfg)
    quick = ModelConfig(embed_dim=576, vocab_size=49152, head="adaptive")  # the quick preset's shapes, default clusters
    assert head_parameters(quick) < head_parameters(quick.replace(head="full")) / 5


def test_a_cluster_with_no_projection_width_is_refused():
    from cvfp.config import ConfigError

    cfg = ModelConfig(
        num_layers=1, context_dim=8, embed_dim=E, vocab_size=V, head="adaptive", adaptive_cutoffs=(20, 100)
    )
    with pytest.raises(ConfigError, match="adaptive_div_value"):
        build_model(cfg, torch.randn(V, E))  # 12 // 4^2 = 0


@pytest.mark.parametrize("head", ["full", "tied", "adaptive"])
@pytest.mark.parametrize("arch", ["e", "e-rnn", "lstm", "transformer"])
def test_every_architecture_trains_with_every_head(tiny_cfg, tmp_path, cache_dir, arch, head):
    cfg = tiny_cfg.override([f'model.arch="{arch}"', f'model.head="{head}"', "model.transformer_window=16",
                             "phase2.learning_rate=0.01"])  # fmt: skip
    summary = train_point(cfg, 8, tmp_path / "run", options=RunOptions(cache_dir=cache_dir, progress=False))
    # It learns: validation falls; the RNN-trained cell under the frozen tied head trains its whole cell on 8 tiny
    # conversations and overfits after one epoch, so its training loss is what falls.
    key = "train_ppl" if (arch, head) == ("e-rnn", "tied") else "val_ppl"
    ppl = [e[key] for e in summary["epochs"]]
    assert ppl[-1] < ppl[0], ppl
    assert summary["details"]["parameters"]["head"] == head_parameters(
        cfg.model.replace(vocab_size=50257, embed_dim=16)
    )


def test_an_adaptive_checkpoint_exports_and_generates_identically(tiny_cfg, tmp_path, cache_dir):
    from cvfp.inference import CVFPLM, load_lm

    cfg = tiny_cfg.override(['model.head="adaptive"', "phase2.learning_rate=0.01"])
    train_point(cfg, 8, tmp_path / "run", options=RunOptions(cache_dir=cache_dir, progress=False))
    lm = load_lm(tmp_path / "run" / "checkpoint")
    assert lm.model.adaptive and int(lm.model.head.rank.sum()) == 50257 * 50256 // 2
    ids = torch.tensor(lm.tokenizer.encode("the cat sat on a mat and we said hello"))
    folder = lm.save_pretrained(tmp_path / "export")
    again = CVFPLM.from_pretrained(folder)
    assert torch.equal(again.model.head.rank, lm.model.head.rank)
    with torch.no_grad():
        c, c2 = torch.zeros(1, lm.model.cfg.context_dim), torch.zeros(1, lm.model.cfg.context_dim)
        for i in range(len(ids) - 1):
            x = lm.model.step_inputs(ids, i, i + 1)
            c, out = lm.model.step(c, x)
            c2, out2 = again.model.step(c2, x)
            assert torch.equal(out, out2)
    torch.testing.assert_close(torch.logsumexp(out, -1), torch.zeros(1), atol=1e-5, rtol=0)
    first = list(lm.generate("the cat", max_new_tokens=12, seed=7, top_k=50, top_p=0.9))
    assert first == list(lm.generate("the cat", max_new_tokens=12, seed=7, top_k=50, top_p=0.9))
    assert first == list(again.generate("the cat", max_new_tokens=12, seed=7, top_k=50, top_p=0.9))
