"""Streaming inference with O(1) memory: evaluation and generation.

The recurrent context c (B, C) and the last k token embeddings are the only
state carried from token to token, so memory does not grow with length.

    lm = CVFPLM.from_checkpoint("runs/quick/points/n16/checkpoint")
    for piece in lm.generate("Hello", max_new_tokens=20, seed=0):
        print(piece, end="")
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from cvfp.config import MAX_SEED, ConfigError
from cvfp.data.tokenizers import Tokenizer, get_tokenizer
from cvfp.errors import InputError
from cvfp.io import hub
from cvfp.io.checkpoint import CheckpointError, load_checkpoint
from cvfp.models import CVFPModel, SequenceLM
from cvfp.models.layers import step_window
from cvfp.models.ngram import KneserNey
from cvfp.models.recurrence import input_contexts, jacobi, sequential, sequential_streams
from cvfp.scoring import Documents, Scorer, Scores, add_scores, score_ngram, score_sequence_model

# Independent documents scored side by side (``reset_each``): rows of one recurrence batch.
STREAMS_PER_BATCH = 64


class StreamState:
    """Recurrent state of B streams: context (B, C) and the last k - 1 embeddings (B, k - 1, E)."""

    def __init__(self, model: CVFPModel, batch: int = 1) -> None:
        cfg = model.cfg
        device = model.embedding.device
        self.context = torch.zeros(batch, cfg.context_dim, device=device)
        self.recent = torch.zeros(batch, cfg.input_tokens - 1, cfg.embed_dim, device=device)

    def push(self, model: CVFPModel, ids: torch.Tensor) -> torch.Tensor:
        """Feed token ids (B,); return next-token logits (B, V)."""
        window = torch.cat([self.recent, model.embed(ids)[:, None]], dim=1)  # (B, k, E), oldest first
        self.recent = window[:, 1:]
        self.context, logits = model.step(self.context, step_window(window, model.cfg.input_tokens)[:, 0])
        return logits


# The lowest non-zero sampling temperature: logits divided by less overflow float32 (use 0 for greedy).
MIN_TEMPERATURE = 1e-3


def check_sampling(
    max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None, batch: int, seed: int = 0
) -> None:
    """Refuse sampling settings that mean nothing, before any work."""
    problems = []
    if max_new_tokens < 0:
        problems.append(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature < math.inf):  # also refuses NaN
        problems.append(f"temperature must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE}, got {temperature}")
    if not 0 <= seed <= MAX_SEED:
        problems.append(f"seed must be in [0, {MAX_SEED}], got {seed}")
    if top_k is not None and top_k < 1:
        problems.append(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        problems.append(f"top_p must be in (0, 1], got {top_p}")
    if batch < 1:
        problems.append(f"batch must be >= 1, got {batch}")
    if problems:
        raise ConfigError("; ".join(problems))


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


class Pretrained:
    """A loaded neural model (in eval mode) with its tokenizer and checkpoint metadata, and its Hugging Face Hub
    round trips (``cvfp.io.hub``)."""

    def __init__(self, model: CVFPModel | SequenceLM, tokenizer: Tokenizer, meta: dict | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.meta = meta or {}

    @property
    def device(self) -> torch.device:
        return self.model.embedding.device

    def save_pretrained(self, folder: str | Path) -> Path:
        """Weights, checkpoint.json, config.json and a model card in ``folder``."""
        return hub.save_pretrained(self.model, self.meta, Path(folder))

    def push_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None) -> str:
        """Save to a temporary folder and upload it to ``repo_id``; returns the commit's URL."""
        with tempfile.TemporaryDirectory() as tmp:
            return hub.push_to_hub(self.save_pretrained(tmp), repo_id, private=private, token=token)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str = "cpu", revision: str | None = None, token: str | None = None
    ):
        """A model from a local folder or a Hub repository id ("org/name")."""
        lm = load_pretrained(name_or_path, device, revision, token)
        if not isinstance(lm, cls):
            raise CheckpointError(f"{name_or_path} holds a {lm.model.cfg.arch} model, not a {cls.__name__}")
        return lm


class CVFPLM(Pretrained):
    """A trained model plus its tokenizer: step, evaluate and generate."""

    model: CVFPModel

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> CVFPLM:
        lm = load_lm(path, device)
        if not isinstance(lm, CVFPLM):
            raise CheckpointError(
                f"{path} holds a {lm.model.cfg.arch} baseline, not a CVFP model: `cvfp eval` scores it, "
                "streaming generation is for CVFP models"
            )
        return lm

    def new_state(self, batch: int = 1) -> StreamState:
        return StreamState(self.model, batch)

    @torch.no_grad()
    def step(self, state: StreamState, ids: torch.Tensor) -> torch.Tensor:
        """Advance ``state`` by token ids (B,) and return logits (B, V)."""
        return state.push(self.model, ids.to(self.device))

    def evaluate(
        self,
        documents: Iterable[np.ndarray],
        reset_each: bool = False,
        chunk: int = 2048,
        jacobi_tolerance: float | None = None,
        jacobi_max_sweeps: int = 200,
    ) -> dict:
        """Loss, PPL, accuracy and bits per byte with the true recurrence.

        ``documents``: token-id arrays. Without ``reset_each`` they form one
        stream (context carried across documents); with it the context
        restarts at 0 for each document, and the documents run side by side
        as rows of one batch. Model memory is bounded by ``chunk``. With
        ``jacobi_tolerance`` the contexts come from Jacobi sweeps instead
        (``cvfp.models.recurrence.jacobi``); the result then records the
        most sweeps and the largest final residual of any stream.
        """
        jacobi_args = None if jacobi_tolerance is None else (jacobi_tolerance, jacobi_max_sweeps)
        return evaluate_documents(self, documents, reset_each, chunk, jacobi_args)

    def _score_streams(
        self, streams: list[tuple[torch.Tensor, Documents]], chunk: int, jacobi_args=None
    ) -> tuple[list[Scores], list]:
        """The scores of ``streams`` (each from c_0 = 0), and Jacobi's record of each when it computed them."""
        scorers = [Scorer(ids, docs) for ids, docs in streams]
        runs = []
        if len(streams) > 1 and jacobi_args is None:
            # Independent streams side by side, STREAMS_PER_BATCH at a time, similar lengths together.
            ordered = sorted(scorers, key=lambda sc: len(sc.ids))
            for g in range(0, len(ordered), STREAMS_PER_BATCH):
                group = ordered[g : g + STREAMS_PER_BATCH]
                for scorer, finals in zip(group, sequential_streams(self.model, [sc.ids for sc in group])):
                    self._score_rows(scorer, 0, finals, None, chunk)
            return [sc.result() for sc in scorers], runs
        for scorer in scorers:
            if jacobi_args is not None:
                runs.append(jacobi(self.model, scorer.ids, *jacobi_args, chunk=chunk))
                chunks = [(0, runs[-1].finals)]
            else:
                chunks = sequential(self.model, scorer.ids, chunk)
            previous = None  # the final context of the row before the chunk
            for s, finals in chunks:
                self._score_rows(scorer, s, finals, previous, chunk)
                previous = finals[-1]
        return [sc.result() for sc in scorers], runs

    def _score_rows(
        self, scorer: Scorer, start: int, finals: torch.Tensor, previous: torch.Tensor | None, chunk: int
    ) -> None:
        """Score rows start.. of the stream from their final contexts ``finals`` (row start reads ``previous``)."""
        model, ids = self.model, scorer.ids
        for b in range(0, finals.shape[0], chunk):
            e = min(finals.shape[0], b + chunk)
            x = model.step_inputs(ids, start + b, start + e)
            inputs = input_contexts(finals, b, e, first=previous)  # each row's previous final context
            scorer.add_features(start + b, model, model.token_features(model.context_step(inputs, x), x, inputs))

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
        check_sampling(max_new_tokens, temperature, top_k, top_p, batch, seed)
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


class BaselineLM(Pretrained):
    """A trained LSTM or Transformer baseline plus its tokenizer, scored like a CVFPLM."""

    model: SequenceLM

    def evaluate(self, documents: Iterable[np.ndarray], reset_each: bool = False, chunk: int = 2048) -> dict:
        """Loss, PPL, accuracy and bits per byte (the model's own scoring: recurrence or sliding windows)."""
        return evaluate_documents(self, documents, reset_each, chunk)

    def _score_streams(self, streams: list[tuple[torch.Tensor, Documents]], chunk: int, jacobi_args=None):
        if jacobi_args is not None:
            raise ValueError(f"Jacobi evaluation is for CVFP models, not a {self.model.cfg.arch} baseline")
        return [score_sequence_model(self.model, ids, docs) for ids, docs in streams], []


class NgramLM:
    """A counted Kneser-Ney model plus its tokenizer, scored like the others (each stream from its start:
    the first tokens with the history they have). It has no Hugging Face form and no streaming generation."""

    device = torch.device("cpu")

    def __init__(self, model: KneserNey, tokenizer: Tokenizer, meta: dict | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta or {}

    def evaluate(self, documents: Iterable[np.ndarray], reset_each: bool = False, chunk: int = 2048) -> dict:
        """Loss, PPL, accuracy and bits per byte of the documents (one stream, or each on its own)."""
        return evaluate_documents(self, documents, reset_each, chunk)

    def _score_streams(self, streams: list[tuple[torch.Tensor, Documents]], chunk: int, jacobi_args=None):
        if jacobi_args is not None:
            raise ValueError("Jacobi evaluation is for CVFP models, not an n-gram model")
        return [score_ngram(self.model, ids.cpu().numpy(), docs) for ids, docs in streams], []


def load_lm(path: str | Path, device: str = "cpu") -> CVFPLM | BaselineLM | NgramLM:
    """The model of a checkpoint folder with its tokenizer, whatever its architecture."""
    return _wrap(*load_checkpoint(Path(path), device))


def load_pretrained(
    name_or_path: str | Path, device: str = "cpu", revision: str | None = None, token: str | None = None
) -> CVFPLM | BaselineLM:
    """The model of a local folder or of a Hub repository id, whatever its (neural) architecture."""
    lm = _wrap(*hub.from_pretrained(name_or_path, device, revision, token))
    if isinstance(lm, NgramLM):
        raise CheckpointError(f"{name_or_path} holds an n-gram model: load it with load_lm (it has no Hub form)")
    return lm


def _wrap(model, meta: dict, table) -> CVFPLM | BaselineLM | NgramLM:
    cls = CVFPLM if isinstance(model, CVFPModel) else NgramLM if isinstance(model, KneserNey) else BaselineLM
    return cls(model, get_tokenizer(table.tokenizer), meta)


@torch.no_grad()
def evaluate_documents(
    lm: CVFPLM | BaselineLM | NgramLM,
    documents: Iterable[np.ndarray],
    reset_each: bool,
    chunk: int,
    jacobi_args=None,
) -> dict:
    """Score documents as one stream (or each from a fresh state) with ``lm._score_streams``: the metrics of
    ``cvfp.scoring.Scores`` with a per-document breakdown (and Jacobi's record, when it computed the contexts)."""
    byte_len = lm.tokenizer.token_byte_lengths()
    docs = [np.asarray(d, dtype=np.int64) for d in documents]
    if reset_each:
        streams = [(d, np.zeros(1, dtype=np.int64)) for d in docs if len(d) >= 2]
    else:
        docs = [d for d in docs if len(d)]
        starts = np.cumsum([0] + [len(d) for d in docs[:-1]]).astype(np.int64)
        streams = [(np.concatenate(docs), starts)] if docs and sum(map(len, docs)) >= 2 else []
    if not streams:
        raise InputError("nothing to evaluate: every stream has fewer than 2 tokens (an empty text?)")
    parts, runs = lm._score_streams(
        [(torch.as_tensor(d, device=lm.device), Documents(starts, byte_len[d[1:]])) for d, starts in streams],
        chunk,
        jacobi_args,
    )
    result = add_scores(parts).metrics()
    if runs:
        result["jacobi"] = {
            "sweeps": max(r.sweeps for r in runs),
            "residual": max(r.residual for r in runs),
            "converged": all(r.converged for r in runs),
        }
    return result
