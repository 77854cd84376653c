"""Every architecture behind one constructor, and the sizing of the baselines."""

from __future__ import annotations

import torch

from cvfp.config import CVFP_ARCHS, ModelConfig
from cvfp.models.lstm import LSTMLM, lstm_hidden
from cvfp.models.model import CVFPModel
from cvfp.models.sequence import SequenceLM
from cvfp.models.transformer import TransformerLM, transformer_width

SEQUENCE_ARCHS = ("lstm", "transformer")


def e_design_body_parameters(cfg: ModelConfig) -> int:
    """ContextBlock + TokenBlock parameters of the E design at ``cfg``'s sizes (independent of V)."""
    small = cfg.replace(arch="e", vocab_size=2, tied_head=True)
    return CVFPModel(small, torch.zeros(2, cfg.embed_dim)).body_parameters()


def baseline_width(cfg: ModelConfig) -> int:
    """Hidden width of an LSTM / Transformer baseline matched to the E design's body."""
    target = e_design_body_parameters(cfg)
    return lstm_hidden(cfg, target) if cfg.arch == "lstm" else transformer_width(cfg, target)


def build_model(cfg: ModelConfig, table: torch.Tensor, seed: int) -> CVFPModel | SequenceLM:
    """The neural model of ``cfg.arch`` (the n-gram baseline is counted, not built here)."""
    if cfg.arch in CVFP_ARCHS:
        return CVFPModel(cfg, table, seed=seed)
    if cfg.arch == "lstm":
        return LSTMLM(cfg, table, lstm_hidden(cfg, e_design_body_parameters(cfg)), seed=seed)
    if cfg.arch == "transformer":
        return TransformerLM(cfg, table, transformer_width(cfg, e_design_body_parameters(cfg)), seed=seed)
    raise ValueError(f"architecture {cfg.arch!r} has no neural model")
