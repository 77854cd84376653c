"""LSTM baseline: an LSTM over the frozen embeddings, trained end to end.

Body: LSTM(E -> H, ``lstm_layers`` layers, forget-gate biases ``lstm_forget_bias``) -> Linear(H -> E), then
LayerNorm(x + that) with the step's input x (``baseline_identity``; LayerNorm(that) without), then the shared
head. H is sized so the body has as many trainable parameters as the CVFP
model's ContextBlock + TokenBlock at the same config (``lstm_hidden``).
Training cuts the stream into ``sequence.STREAMS`` contiguous segments read side
by side (the usual batching of recurrent LMs, ``sequence.stream_steps``): each step advances every
segment by ``batch_size / STREAMS`` tokens, so a step holds
``batch_size`` tokens as for every other model, and the (h, c) state of each
segment is carried from step to step with its gradient cut (truncated BPTT).
The last ``n mod STREAMS`` positions of the stream are not trained on. (On a 2-core CPU, where the head dominates,
one stream of ``batch_size`` steps costs about the same per token, 1.05x:
``bench/baselines_throughput.py``; the segments are for the usual batching,
and for devices where a 512-step sequential loop would idle.) Scoring runs the
true recurrence from a zero state over the whole stream.
"""

from __future__ import annotations

import torch
from torch import nn

from cvfp.config import ModelConfig
from cvfp.models.sequence import SequenceLM, match_width, stream_step_count, stream_steps


def lstm_layers(cfg: ModelConfig) -> int:
    return cfg.lstm_layers or cfg.num_layers


def lstm_body_parameters(cfg: ModelConfig, hidden: int) -> int:
    e, h, layers = cfg.embed_dim, hidden, lstm_layers(cfg)
    lstm = 4 * h * (e + h) + 8 * h + (layers - 1) * (4 * h * (2 * h) + 8 * h)
    return lstm + h * e + e + 2 * e


def lstm_hidden(cfg: ModelConfig, target: float) -> int:
    """The hidden size whose body parameters (or, ``model.baseline_match = "compute"``, training FLOPs per
    target: 6 x parameters) are closest to ``target``."""
    per_parameter = 6 if cfg.baseline_match == "compute" else 1
    return match_width(lambda h: per_parameter * lstm_body_parameters(cfg, h), target)


class LSTMLM(SequenceLM):
    def __init__(self, cfg: ModelConfig, embedding_table: torch.Tensor, hidden: int, seed: int = 0) -> None:
        super().__init__(cfg, embedding_table, seed)
        self.width = hidden
        self.lstm = nn.LSTM(cfg.embed_dim, hidden, num_layers=lstm_layers(cfg), batch_first=True)
        self.proj = nn.Linear(hidden, cfg.embed_dim)
        self.norm = nn.LayerNorm(cfg.embed_dim)
        # PyTorch's default LSTM / Linear init, U(-1/sqrt(H), 1/sqrt(H)), drawn from the run's own generator.
        generator = torch.Generator().manual_seed(seed)
        bound = hidden**-0.5
        with torch.no_grad():
            for p in [*self.lstm.parameters(), *self.proj.parameters()]:
                p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)
            if cfg.lstm_forget_bias is not None:  # gates [i, f, g, o]: the forget gate's two biases sum to it
                for name, p in self.lstm.named_parameters():
                    if name.startswith("bias_"):
                        p[hidden : 2 * hidden] = cfg.lstm_forget_bias if name.startswith("bias_ih") else 0.0

    def output(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The head's input from the step inputs x (.., E) and the LSTM's outputs (.., H)."""
        body = self.proj(out)
        return self.norm(x + body if self.cfg.baseline_identity else body)

    def span_features(self, ids, start, end, state, training):
        """Head inputs for positions [start, end) given the state after position start-1."""
        x = self.embed(ids[start:end])[None]  # (1, T, E)
        out, state = self.lstm(x, state)
        if training:
            state = tuple(s.detach() for s in state)
        return self.output(x[0], out[0]), state

    def train_steps(self, targets, batch_size):
        return stream_step_count(targets, batch_size)

    def train_batches(self, ids, batch_size, generator=None):
        """``sequence.stream_steps``: parallel segments, the (h, c) state carried along each with its gradient
        cut between steps."""
        state = None
        for pos in stream_steps(ids.shape[0] - 1, batch_size, generator, ids.device):
            x = self.embed(ids[pos])
            out, state = self.lstm(x, state)
            state = tuple(z.detach() for z in state)
            yield self.output(x, out).reshape(-1, self.cfg.embed_dim), ids[pos + 1].reshape(-1)
