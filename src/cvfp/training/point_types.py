"""What a point's trainer reads (``PointContext``) and hands back (``Trained``): the records between
``training.point`` and the family trainers (``family_cvfp``, ``family_sequence``, ``family_count``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvfp.data.corpora import Corpus
from cvfp.data.embeddings import EmbeddingTable
from cvfp.data.protocols import default_cache_dir
from cvfp.data.tokenizers import Tokenizer
from cvfp.io.rundir import RunDir
from cvfp.scoring import Documents
from cvfp.training.resume import StateStore
from cvfp.training.sharding import PointRanks


@dataclasses.dataclass
class Resources:
    """What every point of a sweep shares: corpus, frozen table, tokenizer."""

    corpus: Corpus
    table: EmbeddingTable
    tokenizer: Tokenizer


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How points are run, not what they compute: where tokenised corpora are cached, whether progress
    bars show, and the preset named in reports. Passed whole from the CLI to every point."""

    cache_dir: Path | None = None
    progress: bool = True
    preset: str | None = None

    def token_cache(self) -> Path:
        """Where tokenised corpora are cached: ``cache_dir``, or the user's cache folder."""
        return self.cache_dir or default_cache_dir()


DEFAULT_OPTIONS = RunOptions()


@dataclasses.dataclass
class PointContext:
    """What a family trainer needs besides the config and the split."""

    resources: Resources
    device: torch.device
    run: RunDir  # the point's folder: metrics go to run.log_metric
    state: StateStore | None  # resume state (None on a sharded point)
    progress: bool
    ranks: PointRanks
    val_documents: Documents  # the validation stream's conversations and target bytes


@dataclasses.dataclass
class Trained:
    """What a family trainer hands back to ``train_point``."""

    fields: dict  # summary fields of this family (point.CVFP_FIELDS for CVFP designs)
    best: dict  # validation metrics of the reported model
    epochs: list[dict]
    best_epoch: int
    stopped_epoch: int
    phase2_seconds: float
    trainable_parameters: int
    train_flops: int
    details: dict  # architecture-specific facts (parameter split, widths, n-gram order)
    model: Any  # the reported model (a neural one on its best weights), checkpointed
    test: Callable[[np.ndarray, Documents], dict]  # metrics of a test stream (its documents), reported model

    @classmethod
    def from_loop(cls, result, **fields: Any) -> Trained:
        """From the next-token loop's ``TrainResult`` and the family's own fields."""
        return cls(
            best=result.best,
            epochs=result.epochs,
            best_epoch=result.best_epoch,
            stopped_epoch=result.stopped_epoch,
            phase2_seconds=result.seconds,
            **fields,
        )
