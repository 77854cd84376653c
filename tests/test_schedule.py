"""The Phase 2 learning-rate schedule and weight decay, applied alike to every model (cvfp.training.next_token)."""

import math

import pytest
import torch

from cvfp.config import ConfigError, ModelConfig, Phase2Config
from cvfp.models import build_model
from cvfp.training.next_token import learning_rate_at, train_next_token


def test_the_rate_by_hand():
    cosine = Phase2Config(learning_rate=1e-3, schedule="cosine", warmup_fraction=0.1)
    # 100 steps: warmup over the first 10 (1e-4, 2e-4, ..., 1e-3), then cosine from 1e-3 to 0 over 90.
    assert [learning_rate_at(cosine, k, 100) for k in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])
    assert learning_rate_at(cosine, 10, 100) == pytest.approx(1e-3)
    assert learning_rate_at(cosine, 55, 100) == pytest.approx(0.5e-3)  # halfway through the decay
    assert learning_rate_at(cosine, 100, 100) == pytest.approx(0.0, abs=1e-12)
    linear = Phase2Config(learning_rate=2e-3, schedule="linear")
    assert [learning_rate_at(linear, k, 4) for k in range(4)] == pytest.approx([2e-3, 1.5e-3, 1e-3, 0.5e-3])
    constant = Phase2Config(learning_rate=3e-4)
    assert {learning_rate_at(constant, k, 50) for k in range(50)} == {3e-4}
    with pytest.raises(ConfigError, match="warmup_fraction"):
        Phase2Config(warmup_fraction=1.0)


def _run(cfg: Phase2Config, steps_per_epoch: int | None = 4):
    """A linear model trained by the shared loop; the learning rate of every optimizer step, as applied."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    data, targets = torch.randn(16, 4, generator=torch.Generator().manual_seed(1)), torch.arange(16) % 3
    seen = []

    def batches(generator):
        for s in range(0, 16, 4):
            yield torch.nn.functional.cross_entropy(model(data[s : s + 4]), targets[s : s + 4]), 4

    params = list(model.parameters())
    optimizer_step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return optimizer_step(self, *args, **kwargs)

    torch.optim.Adam.step = spy
    try:
        train_next_token(model, params, batches, lambda: {"loss": 1.0, "ppl": 2.7, "acc": 0.0},
                         lambda: {k: v.detach().clone() for k, v in model.state_dict().items()}, cfg,
                         progress=False, steps_per_epoch=steps_per_epoch)  # fmt: skip
    finally:
        torch.optim.Adam.step = optimizer_step
    return model, seen


def test_the_loop_applies_the_schedule_over_the_epoch_cap():
    cfg = Phase2Config(epochs=3, patience=0, schedule="cosine", warmup_fraction=0.25, adam="reference")
    _, seen = _run(cfg)
    assert seen == pytest.approx([learning_rate_at(cfg, k, 12) for k in range(12)])  # 3 epochs x 4 steps
    _, constant = _run(Phase2Config(epochs=2, patience=0, adam="reference"), steps_per_epoch=None)
    assert constant == [1e-3] * 8  # the original's constant rate needs no step count
    with pytest.raises(ValueError, match="steps per epoch"):
        _run(cfg, steps_per_epoch=None)


def test_weight_decay_is_decoupled_by_hand():
    """AdamW with a zero gradient: Adam's update is 0, so each step multiplies the weights by 1 - lr x decay."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    from cvfp.training.next_token import make_adam

    for adam in ("reference", "fused"):
        w.data = torch.tensor([1.0, -2.0])
        optimizer = make_adam([w], Phase2Config(learning_rate=0.1, weight_decay=0.5, adam=adam))
        for _ in range(3):
            optimizer.zero_grad()
            (w * 0.0).sum().backward()
            optimizer.step()
        assert w.detach().tolist() == pytest.approx([1.0 * 0.95**3, -2.0 * 0.95**3])
    assert type(make_adam([w], Phase2Config())) is torch.optim.Adam  # no decay: the original's Adam


@pytest.mark.parametrize("arch", ["lstm", "transformer"])
@pytest.mark.parametrize("targets, batch", [(99, 16), (200, 64), (40, 512)])
def test_a_baseline_counts_the_steps_it_trains(arch, targets, batch):
    cfg = ModelConfig(arch=arch, num_layers=1, context_dim=8, embed_dim=6, vocab_size=30, transformer_window=8)
    model = build_model(cfg, torch.randn(30, 6), seed=0)
    ids = torch.randint(0, 30, (targets + 1,), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert model.train_steps(targets, batch) == sum(1 for _ in model.train_batches(ids, batch))
    assert math.ceil(targets / batch) >= 1
