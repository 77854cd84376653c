"""The E design's cell trained as a recurrent network: what the cell can do when trained for the task.

The same ContextBlock, TokenBlock and head as the E design (the same widths and the same init of the blocks),
but no Phase 1 and no cached contexts: the whole cell is trained end to end on the next-token loss by truncated
backpropagation through time over the true sequential recurrence (algorithm §1). Training reads the stream
as ``sequence.stream_steps`` segments side by side, like the LSTM: each step advances every segment by W =
batch_size / STREAMS tokens and backpropagates through those W recurrence steps; the context is carried from
step to step with its gradient cut. Slow on purpose (one small step per token, no parallel form): it is the
reference the fixed-point training of Phase 1 and its parallel end-to-end variants are measured against.
Scoring runs the same recurrence from a zero context over the whole stream, as for every CVFP model.
"""

from __future__ import annotations

import torch

from cvfp.config import ModelConfig
from cvfp.models import e_design
from cvfp.models.model import CVFPModel, Design
from cvfp.models.sequence import SequenceLM, stream_step_count, stream_steps


class CellRNN(SequenceLM):
    def __init__(self, cfg: ModelConfig, embedding_table: torch.Tensor, seed: int = 0) -> None:
        if cfg.input_tokens != 1:
            raise ValueError(
                f"the RNN-trained cell reads one token per step (model.input_tokens = 1), got {cfg.input_tokens}"
            )
        super().__init__(cfg, embedding_table, seed)
        # The E design's blocks, drawn as CVFPModel draws them for this seed; its own head and table are unused.
        self.cell = CVFPModel(cfg.replace(head="tied"), embedding_table, Design(e_design.context_layer_widths), seed)
        self.cell.register_buffer("embedding", None, persistent=False)  # one copy of the table: this model's
        self.width = cfg.context_dim

    def unroll(self, c: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The recurrence over x (B, T, E) from contexts c (B, C): the head's inputs (B, T, E) and the last context
        (the graph kept through every step)."""
        features = []
        for j in range(x.shape[1]):
            contexts = self.cell.context_step(c, x[:, j])
            features.append(self.cell.token_features(contexts, x[:, j], previous=c))
            c = contexts[-1]
        return torch.stack(features, 1), c

    def span_features(self, ids, start, end, state, training):
        """Head inputs for positions [start, end) given the context after position start - 1 (zero at the start)."""
        x = self.embed(ids[start:end])[None]
        c = x.new_zeros(1, self.cfg.context_dim) if state is None else state
        features, c = self.unroll(c, x)
        return features[0], c.detach() if training else c

    def train_steps(self, targets, batch_size):
        return stream_step_count(targets, batch_size)

    def train_batches(self, ids, batch_size, generator=None):
        """Truncated BPTT over ``sequence.stream_steps``: W = batch_size / STREAMS steps per window."""
        c = None
        for pos in stream_steps(ids.shape[0] - 1, batch_size, generator, ids.device):
            x = self.embed(ids[pos])  # (S, W, E)
            features, c = self.unroll(x.new_zeros(x.shape[0], self.cfg.context_dim) if c is None else c, x)
            c = c.detach()
            yield features.reshape(-1, self.cfg.embed_dim), ids[pos + 1].reshape(-1)
