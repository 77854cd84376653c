"""Shared fixtures: a tiny synthetic corpus and a tiny run configuration."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

from cvfp.config import DataConfig, MetricsConfig, ModelConfig, Phase1Config, Phase2Config, RunConfig

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dog",
    "ran",
    "to",
    "park",
    "and",
    "we",
    "said",
    "hello",
    "how",
    "are",
    "you",
    "today",
    "fine",
    "thanks",
]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """A .txt corpus of 40 short 'conversations' separated by blank lines."""
    rng = random.Random(0)
    docs = []
    for _ in range(40):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 12))) for _ in range(rng.randint(3, 6))]
        docs.append("\n".join(lines))
    path = tmp_path_factory.mktemp("corpus") / "tiny.txt"
    path.write_text("\n\n".join(docs), encoding="utf-8")
    return path


class FakeTokenizer:
    """A tokenizer of a 30-token vocabulary in which every token is one byte (models tested without text)."""

    name, vocab_size, eot_id = "fake", 30, 0

    def token_byte_lengths(self):
        import numpy as np

        return np.ones(30, dtype=np.int64)


def tiny_config(corpus: Path, **data) -> RunConfig:
    return RunConfig(
        model=ModelConfig(num_layers=2, context_dim=16),
        phase1=Phase1Config(max_iterations=6, min_iterations=2, batch_tokens=256),
        phase2=Phase2Config(epochs=3, patience=1, batch_size=128),
        metrics=MetricsConfig(er_max_rows=500, er_centered_rows=64),
        data=DataConfig(corpus=str(corpus), embeddings="random-16", **data),
        seed=3,
        device="cpu",
    )


@pytest.fixture
def tiny_cfg(tiny_corpus) -> RunConfig:
    return tiny_config(tiny_corpus)


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


def tiny_cli_args(corpus: Path, cache_dir: Path) -> list[str]:
    """Command-line flags of a tiny, fast run on ``corpus`` (the held-out protocol, 1 layer, C = 8)."""
    return ["--corpus", str(corpus), "--embeddings", "random-16", "--layers", "1", "--context-dim", "8",
            "--device", "cpu", "--no-progress", "--cache-dir", str(cache_dir), "--protocol", "heldout",
            "--set", "phase1.max_iterations=3", "--set", "phase2.epochs=2", "--set", "phase2.batch_size=256",
            "--set", "data.heldout_val_conversations=3", "--set", "data.heldout_test_conversations=2",
            "--set", "data.heldout_pool=0", "--set", "data.heldout_val_tokens=0",
            "--set", "data.heldout_test_tokens=0"]  # fmt: skip


def load_script(name: str):
    """``scripts/<name>.py`` as a module (registered under its name, as dataclasses need)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
