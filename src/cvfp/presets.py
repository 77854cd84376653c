"""Named presets: a complete RunConfig (resolved against its table's shape) plus the sample sizes of a
scaling sweep."""

from __future__ import annotations

from typing import NamedTuple

from cvfp.config import DataConfig, ModelConfig, Phase1Config, Phase2Config, RunConfig
from cvfp.data.embeddings import resolve_config

# Phase 2 batch of the original's preset (--preset seed): the original sized it from free GPU memory
# (about 7-8k tokens on an L4, never logged); 8192 is the nearest power of two.
SEED_PHASE2_BATCH = 8192


class Preset(NamedTuple):
    """A preset: the config of its runs (no size: ``data.samples`` is null) and its sweep's sizes."""

    config: RunConfig
    samples: tuple[int, ...]


def seed_preset() -> Preset:
    """The original report's configuration: 6 layers, C = 768, algorithm §2-4 exactly."""
    cfg = RunConfig(
        model=ModelConfig(arch="e", num_layers=6, context_dim=768),
        phase1=Phase1Config(),
        phase2=Phase2Config(epochs=10, patience=1, restore_best=False, batch_size=SEED_PHASE2_BATCH),
        data=DataConfig(protocol="seed"),
    )
    return Preset(resolve_config(cfg), (50, 100, 200, 500))


def quick_preset() -> Preset:
    """The same system, small enough for a four-point sweep in minutes on 2 CPU cores.

    2 layers, C = 256, on ``chitchat`` (short casual chats): at the 3k-30k
    train tokens that fit in ten CPU minutes, ShareGPT's mix of code, essays
    and languages leaves PPL on a plateau for the smallest N (measured, see
    README), whereas short homogeneous chats give a learnable regime. Held-out
    protocol (validation and test each at least 40 chats and 12,000 tokens, no chat above 5% of its
    set, the same for every N) on a seeded order of the first 1000 chats, patience 2 with restore of the best
    epoch, at most 5 epochs.
    """
    cfg = RunConfig(
        model=ModelConfig(arch="e", num_layers=2, context_dim=256),
        phase1=Phase1Config(),
        phase2=Phase2Config(epochs=5, patience=2, restore_best=True, batch_size=512),
        data=heldout("chitchat", conversations=40, tokens=12_000, pool=1000),
    )
    return Preset(resolve_config(cfg), (8, 16, 32, 64))


def heldout(corpus: str, conversations: int, tokens: int, pool: int) -> DataConfig:
    """The held-out protocol with validation and test of the same size (at least ``conversations`` and
    ``tokens`` each) on a seeded order of the first ``pool`` records."""
    return DataConfig(
        corpus=corpus,
        protocol="heldout",
        heldout_val_conversations=conversations,
        heldout_test_conversations=conversations,
        heldout_val_tokens=tokens,
        heldout_test_tokens=tokens,
        heldout_pool=pool,
    )


def medium_preset() -> Preset:
    """Where architecture can matter: up to about a million train tokens on a laptop.

    ShareGPT (the offline corpus closest to the original's UltraChat: people's questions and a chat model's
    answers), five sizes 2x apart from 48 to 768 records (about 70k to 1.2M train tokens with SmolLM2's
    tokenizer), the quick preset's model (2 layers, C = 256) with the adaptive head (docs/heads.md), the
    held-out protocol with validation and test each at least 100 conversations and 150,000 tokens (no
    conversation above 5% of its set) on a seeded order of the first 4,000 records, at most 3 epochs with
    patience 1 and the best epoch restored.
    """
    cfg = RunConfig(
        model=ModelConfig(arch="e", num_layers=2, context_dim=256, head="adaptive"),
        phase1=Phase1Config(),
        phase2=Phase2Config(epochs=3, patience=1, restore_best=True, batch_size=512),
        data=heldout("sharegpt", conversations=100, tokens=150_000, pool=4000),
    )
    return Preset(resolve_config(cfg), (48, 96, 192, 384, 768))


def smoke_preset() -> Preset:
    """The whole pipeline in under a minute: to try cvfp out, and for the tests that need a real run.

    Both phases, the report, the plots and the checkpoints, on the quick preset's corpus (chitchat) at two
    small sizes, with a one-layer model (C = 32), the adaptive head, and validation and test sets of at least
    40 short chats and 4,000 tokens each.
    """
    cfg = RunConfig(
        model=ModelConfig(arch="e", num_layers=1, context_dim=32, head="adaptive"),
        phase1=Phase1Config(max_iterations=10),
        phase2=Phase2Config(epochs=2, patience=1, restore_best=True, batch_size=512),
        data=heldout("chitchat", conversations=40, tokens=4_000, pool=400),
    )
    return Preset(resolve_config(cfg), (8, 16))


PRESETS = {"seed": seed_preset, "quick": quick_preset, "medium": medium_preset, "smoke": smoke_preset}
