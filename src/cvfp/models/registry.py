"""The table of architectures: every name cvfp knows, what it is, how it is built and trained.

Every other module asks this table (``spec(name)``) instead of branching on a name. Adding an
architecture is one model file, one row below and its tests. A row says:

- ``family``: "cvfp" (a ContextBlock trained by Phase 1, then Phase 2 on cached contexts),
  "sequence" (an end-to-end body through the shared next-token loop) or "count" (an n-gram model);
- ``design`` (CVFP family): the ContextLayer widths and what the TokenBlock reads (``Design``);
- ``build``: the neural model (None for a counted model);
- ``label``: its name in reports;
- ``hub``: whether it has a Hugging Face form (``cvfp export``).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable

import torch
from torch import nn

from cvfp.config import Arch, ModelConfig
from cvfp.models import e_design, equal_decrease
from cvfp.models.cell_rnn import CellRNN
from cvfp.models.lstm import LSTMLM, lstm_hidden
from cvfp.models.model import CVFPModel, Design
from cvfp.models.transformer import TransformerLM, transformer_width

Family = typing.Literal["cvfp", "sequence", "count"]


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    name: str
    family: Family
    label: str
    build: Callable[[ModelConfig, torch.Tensor, int], nn.Module] | None
    design: Design | None = None
    hub: bool = True

    @property
    def trains_by_gradient(self) -> bool:
        """Whether it has a learning rate and epochs (a search or tuning grid applies)."""
        return self.family != "count"


def e_design_body_parameters(cfg: ModelConfig) -> int:
    """ContextBlock + TokenBlock parameters of the E design at ``cfg``'s sizes (independent of V)."""
    small = cfg.replace(arch="e", vocab_size=2, head="tied")
    return CVFPModel(small, torch.zeros(2, cfg.embed_dim), E_DESIGN).body_parameters()


def baseline_budget(cfg: ModelConfig) -> float:
    """What a baseline's body is matched to (``model.baseline_match``): the E design's body parameters, or its
    body training FLOPs per train target per Phase 2 epoch (see the field's documentation)."""
    if cfg.baseline_match == "parameters":
        return e_design_body_parameters(cfg)
    small = CVFPModel(cfg.replace(arch="e", vocab_size=2, head="tied"), torch.zeros(2, cfg.embed_dim), E_DESIGN)
    counts = small.parameter_counts()
    context, token = counts["context_block"], counts["token_block"]
    return 6 * token + 2 * context + 6 * context * cfg.match_phase1_sweeps


def _cvfp(design: Design) -> Callable[[ModelConfig, torch.Tensor, int], nn.Module]:
    return lambda cfg, table, seed: CVFPModel(cfg, table, design, seed=seed)


def _lstm(cfg: ModelConfig, table: torch.Tensor, seed: int) -> nn.Module:
    return LSTMLM(cfg, table, lstm_hidden(cfg, baseline_budget(cfg)), seed=seed)


def _transformer(cfg: ModelConfig, table: torch.Tensor, seed: int) -> nn.Module:
    return TransformerLM(cfg, table, transformer_width(cfg, baseline_budget(cfg)), seed=seed)


E_DESIGN = Design(e_design.context_layer_widths)
EQUAL_DECREASE = Design(equal_decrease.context_layer_widths)
# Controls: the E design with its ContextBlock left at its random init (Phase 1's sweeps run without
# updates), and the E design whose TokenBlock reads zero contexts (Phase 1 skipped): what the trained
# context contributes is the E design's result against these.
RANDOM_CONTEXT = Design(e_design.context_layer_widths, context="random")
ZERO_CONTEXT = Design(e_design.context_layer_widths, context="zero")

RANDOM_LABEL = "random frozen ContextBlock (no Phase 1 training)"
_ROWS = (
    ArchSpec("e", "cvfp", "E design (CVFP)", _cvfp(E_DESIGN), E_DESIGN),
    ArchSpec("equal-decrease", "cvfp", "equal-decrease (CVFP)", _cvfp(EQUAL_DECREASE), EQUAL_DECREASE),
    ArchSpec("random-context", "cvfp", RANDOM_LABEL, _cvfp(RANDOM_CONTEXT), RANDOM_CONTEXT),
    ArchSpec("zero-context", "cvfp", "zero contexts (TokenBlock alone)", _cvfp(ZERO_CONTEXT), ZERO_CONTEXT),
    ArchSpec("e-rnn", "sequence", "E design's cell trained as an RNN (TBPTT)", CellRNN, hub=False),
    ArchSpec("lstm", "sequence", "LSTM", _lstm),
    ArchSpec("transformer", "sequence", "Transformer", _transformer),
    ArchSpec("ngram", "count", "Kneser-Ney n-gram", None, hub=False),
)
ARCHS: dict[str, ArchSpec] = {row.name: row for row in _ROWS}
# The original report's own comparison (its §7-8): the E design against equal-decrease.
ORIGINAL_PAIR = ("e", "equal-decrease")
if set(ARCHS) != set(typing.get_args(Arch)):  # config.Arch declares the names the config accepts
    raise ImportError(f"the registry's rows {sorted(ARCHS)} differ from config.Arch {typing.get_args(Arch)}")


def spec(name: str) -> ArchSpec:
    """The row of architecture ``name``."""
    return ARCHS[name]


def names(family: Family | None = None) -> list[str]:
    """Every architecture's name (of one ``family``), in the table's order."""
    return [row.name for row in _ROWS if family is None or row.family == family]


def build_model(cfg: ModelConfig, table: torch.Tensor, seed: int = 0) -> nn.Module:
    """The neural model of ``cfg.arch`` (a counted model is built by its trainer, not here)."""
    row = spec(cfg.arch)
    if row.build is None:
        raise ValueError(f"architecture {cfg.arch!r} is counted, not built as a neural model")
    return row.build(cfg, table, seed)
