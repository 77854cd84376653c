"""Streaming inference with O(1) memory: evaluation and generation.

The recurrent context c (B, C) and the last k token embeddings are the only
state carried from token to token, so memory does not grow with length.

    lm = CVFPLM.from_checkpoint("runs/quick/points/n16/checkpoint")
    for piece in lm.generate("Hello", max_new_tokens=20, seed=0):
        print(piece, end="")
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cvfp.data.tokenizers import Tokenizer, get_tokenizer
from cvfp.io.checkpoint import CheckpointError, load_checkpoint
from cvfp.metrics import bits_per_byte, perplexity
from cvfp.models import CVFPModel, SequenceLM
from cvfp.training.baselines import evaluate_sequence
from cvfp.training.caches import sequential_chunks


class StreamState:
    """Recurrent state of B streams: context (B, C) and the last k embeddings (B, k, E)."""

    def __init__(self, model: CVFPModel, batch: int = 1) -> None:
        cfg = model.cfg
        device = model.embedding.device
        self.context = torch.zeros(batch, cfg.context_dim, device=device)
        self.window = torch.zeros(batch, cfg.input_tokens, cfg.embed_dim, device=device)

    def push(self, model: CVFPModel, ids: torch.Tensor) -> torch.Tensor:
        """Feed token ids (B,); return next-token logits (B, V)."""
        emb = model.embed(ids)  # (B, E)
        self.window = torch.cat([self.window[:, 1:], emb[:, None]], dim=1)
        x = self.window.flatten(1)  # (B, kE), oldest first
        self.context, logits = model.step(self.context, x)
        return logits


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Mask all but the top-k tokens and the smallest set with mass >= top_p."""
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, sorted_logits)
    return logits


class CVFPLM:
    """A trained model plus its tokenizer: step, evaluate and generate."""

    def __init__(self, model: CVFPModel, tokenizer: Tokenizer, meta: dict | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta or {}

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> CVFPLM:
        lm = load_lm(path, device)
        if not isinstance(lm, CVFPLM):
            raise CheckpointError(
                f"{path} holds a {lm.model.cfg.arch} baseline, not a CVFP model: `cvfp eval` scores it, "
                "streaming generation is for CVFP models"
            )
        return lm

    @property
    def device(self) -> torch.device:
        return self.model.embedding.device

    def new_state(self, batch: int = 1) -> StreamState:
        return StreamState(self.model, batch)

    @torch.no_grad()
    def step(self, state: StreamState, ids: torch.Tensor) -> torch.Tensor:
        """Advance ``state`` by token ids (B,) and return logits (B, V)."""
        return state.push(self.model, ids.to(self.device))

    def evaluate(self, documents: Iterable[np.ndarray], reset_each: bool = False, chunk: int = 2048) -> dict:
        """Loss, PPL, accuracy and bits per byte with the true recurrence.

        ``documents``: token-id arrays. Without ``reset_each`` they form one
        stream (context carried across documents); with it the context
        restarts at 0 for each document. Model memory is bounded by ``chunk``.
        """
        return evaluate_documents(self, documents, reset_each, chunk)

    def _score_stream(self, ids: torch.Tensor, chunk: int, totals: dict) -> None:
        """Predict ids[1:] from the recurrence over ids, ``chunk`` positions at a time."""
        model = self.model
        for s, x, rows in sequential_chunks(model, ids, chunk):
            logits = model.token_logits(model.split_contexts(rows), x)
            targets = ids[s + 1 : s + 1 + rows.shape[0]]
            totals["nats"] += F.cross_entropy(logits, targets, reduction="sum").item()
            totals["correct"] += int((logits.argmax(-1) == targets).sum())
            totals["count"] += rows.shape[0]

    @torch.no_grad()
    def generate_ids(
        self,
        prompt: list[int],
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int = 0,
        batch: int = 1,
        state: StreamState | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield (B,) sampled token ids, one step at a time. temperature 0 = greedy.

        ``state`` (optional) is the recurrent state to start from and update.
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        prompt = prompt or [self.tokenizer.eot_id]
        generator = torch.Generator(device=self.device).manual_seed(seed)
        state = self.new_state(batch) if state is None else state
        for tok in prompt:
            logits = self.step(state, torch.full((batch,), tok, dtype=torch.long))
        for _ in range(max_new_tokens):
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                probs = filter_logits(logits / temperature, top_k, top_p).softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            yield nxt
            logits = self.step(state, nxt)

    def generate(self, prompt: str, max_new_tokens: int = 50, **kwargs) -> Iterator[str]:
        """Yield text pieces of one sample as they are produced."""
        pending: list[int] = []
        for ids in self.generate_ids(self.tokenizer.encode(prompt), max_new_tokens, **kwargs):
            pending.append(int(ids[0]))
            text = self.tokenizer.decode(pending)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                yield text
                pending = []


class BaselineLM:
    """A trained LSTM or Transformer baseline plus its tokenizer, scored like a CVFPLM."""

    def __init__(self, model: SequenceLM, tokenizer: Tokenizer, meta: dict | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta or {}

    def evaluate(self, documents: Iterable[np.ndarray], reset_each: bool = False, chunk: int = 2048) -> dict:
        """Loss, PPL, accuracy and bits per byte (the model's own scoring: recurrence or sliding windows)."""
        return evaluate_documents(self, documents, reset_each, chunk)

    def _score_stream(self, ids: torch.Tensor, chunk: int, totals: dict) -> None:
        result = evaluate_sequence(self.model, ids)
        totals["nats"] += result["loss"] * result["tokens"]
        totals["correct"] += round(result["acc"] * result["tokens"])
        totals["count"] += result["tokens"]


def load_lm(path: str | Path, device: str = "cpu") -> CVFPLM | BaselineLM:
    """The model of a checkpoint folder with its tokenizer, whatever its architecture."""
    model, meta, table = load_checkpoint(Path(path), device)
    cls = CVFPLM if isinstance(model, CVFPModel) else BaselineLM
    return cls(model, get_tokenizer(table.tokenizer), meta)


@torch.no_grad()
def evaluate_documents(lm: CVFPLM | BaselineLM, documents: Iterable[np.ndarray], reset_each: bool, chunk: int) -> dict:
    """Score documents as one stream (or each from a fresh state) with ``lm._score_stream``."""
    byte_len = lm.tokenizer.token_byte_lengths()
    totals = {"nats": 0.0, "correct": 0, "count": 0, "bytes": 0}
    streams = documents if reset_each else [np.concatenate([np.asarray(d) for d in documents])]
    for doc in streams:
        if len(doc) < 2:
            continue
        ids = torch.as_tensor(np.asarray(doc), dtype=torch.long, device=lm.model.embedding.device)
        lm._score_stream(ids, chunk, totals)
        totals["bytes"] += int(byte_len[np.asarray(doc)[1:]].sum())
    if totals["count"] == 0:
        raise ValueError("nothing to evaluate: every stream has fewer than 2 tokens")
    loss = totals["nats"] / totals["count"]
    return {
        "loss": loss,
        "ppl": perplexity(loss),
        "acc": totals["correct"] / totals["count"],
        "bpb": bits_per_byte(totals["nats"], totals["bytes"]) if totals["bytes"] else None,
        "tokens": totals["count"],
    }
