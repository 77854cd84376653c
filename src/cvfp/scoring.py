"""Scoring, in one place: the nats, top-1 hits, tokens and bytes of next-token predictions, per document.

Every model is scored through a ``Scorer`` over one stream: it is fed rows (row p predicts the stream's
token p + 1) as the head's input (``add_features``), as logits (``add_logits``) or as already computed
per-row nats and hits (``add_rows``, the n-gram model's), and sums them per
document (``Documents``: where each document of the stream starts, and the UTF-8 bytes of each target).
``Scores`` holds the sums: per document, so that statistics can resample documents (conversations), and
in total, the metrics every report prints (``Scores.metrics``). A sharded point sums the same tensors
over its ranks (``Scores.tensors``).

Each row's nats and top-1 hit come from the model's head (``cvfp.models.heads``: ``row_scores`` in place
in a buffer of logits for a linear head, the exact log-probability and ``predict`` for an adaptive one).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from cvfp.metrics import bits_per_byte, perplexity
from cvfp.models.heads import row_scores
from cvfp.models.ngram import KneserNey
from cvfp.models.sequence import SequenceLM


@dataclasses.dataclass(frozen=True)
class Documents:
    """The documents of one stream of T tokens: ``starts`` (D,), the first position of each (starts[0] = 0),
    and ``target_bytes`` (T - 1,), the UTF-8 bytes of each predicted token (None: bits per byte unknown)."""

    starts: np.ndarray
    target_bytes: np.ndarray | None = None

    @classmethod
    def whole(cls, tokens: int, target_bytes: np.ndarray | None = None) -> Documents:
        """A stream that is one document."""
        return cls(np.zeros(1, dtype=np.int64), target_bytes)

    def __post_init__(self) -> None:
        starts = np.asarray(self.starts)
        if starts.ndim != 1 or len(starts) == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0):
            raise ValueError(f"document starts must begin at 0 and increase, got {starts[:8]}...")

    def of_targets(self, tokens: int) -> np.ndarray:
        """The document (T - 1,) of each target: row p predicts position p + 1."""
        return np.searchsorted(self.starts, np.arange(1, tokens), side="right") - 1


@dataclasses.dataclass
class Scores:
    """Sums per document (D,), float64: nats, top-1 hits, scored tokens, target bytes (None when unknown)."""

    nats: torch.Tensor
    hits: torch.Tensor
    tokens: torch.Tensor
    bytes: torch.Tensor | None

    def tensors(self) -> list[torch.Tensor]:
        """Every sum, for one ``all_reduce`` over ranks."""
        return [self.nats, self.hits, self.tokens] + ([] if self.bytes is None else [self.bytes])

    def metrics(self) -> dict:
        """Loss (mean nats), PPL, top-1 accuracy, tokens, bits per byte (None when the bytes are unknown), and the
        per-document sums (``documents``: lists of nats, hits, tokens and bytes, documents with no scored
        token included)."""
        n = int(self.tokens.sum().item())
        if n == 0:
            raise ValueError("nothing to score: the stream has fewer than 2 tokens")
        nats = self.nats.sum().item()
        loss = nats / n
        result = {"loss": loss, "ppl": perplexity(loss), "acc": self.hits.sum().item() / n, "tokens": n}
        total_bytes = 0 if self.bytes is None else int(self.bytes.sum().item())
        result["bpb"] = bits_per_byte(nats, total_bytes) if total_bytes else None
        result["documents"] = {
            "nats": self.nats.tolist(),
            "hits": [int(h) for h in self.hits.tolist()],
            "tokens": [int(t) for t in self.tokens.tolist()],
            "bytes": None if self.bytes is None else [int(b) for b in self.bytes.tolist()],
        }
        return result


class Scorer:
    """Sums the scores of one stream's rows per document, on the device of the rows (no host copy per batch)."""

    def __init__(self, ids: torch.Tensor, documents: Documents | None = None) -> None:
        tokens = ids.shape[0]
        documents = documents or Documents.whole(tokens)
        device = ids.device
        self.ids = ids
        self.doc = torch.as_tensor(documents.of_targets(tokens), device=device)
        count = len(documents.starts)
        self.scores = Scores(*(torch.zeros(count, dtype=torch.float64, device=device) for _ in range(3)), None)
        if documents.target_bytes is not None:
            if len(documents.target_bytes) != tokens - 1:
                raise ValueError(f"{len(documents.target_bytes)} target byte counts for {tokens - 1} targets")
            per_target = torch.as_tensor(documents.target_bytes, dtype=torch.float64, device=device)
            self.scores.bytes = torch.zeros(count, dtype=torch.float64, device=device)
            self.scores.bytes.index_add_(0, self.doc, per_target)

    def targets(self, first: int, rows: int) -> torch.Tensor:
        """The targets of rows [first, first + rows): tokens first + 1 ..."""
        return self.ids[first + 1 : first + 1 + rows]

    def add_rows(self, first: int, nats: torch.Tensor, hits: torch.Tensor) -> None:
        """Add rows [first, first + B): their nats (B,) and top-1 hits (B,)."""
        doc = self.doc[first : first + nats.shape[0]]
        self.scores.nats.index_add_(0, doc, nats.to(device=doc.device, dtype=torch.float64))
        self.scores.hits.index_add_(0, doc, hits.to(device=doc.device, dtype=torch.float64))
        self.scores.tokens.index_add_(0, doc, torch.ones_like(doc, dtype=torch.float64))

    def add_logits(self, first: int, logits: torch.Tensor) -> None:
        """Add rows [first, first + B) from their logits (B, V), which are **consumed** (overwritten)."""
        self.add_rows(first, *row_scores(logits, self.targets(first, logits.shape[0])))

    def add_features(self, first: int, model, t: torch.Tensor, buffer: torch.Tensor | None = None) -> None:
        """Add rows [first, first + B) from the head's input t (B, E) of ``model`` (``HeadMixin.head_scores``;
        a linear head's logits go into ``buffer``)."""
        self.add_rows(first, *model.head_scores(t, self.targets(first, t.shape[0]), buffer))

    def result(self) -> Scores:
        return self.scores


def add_scores(parts: list[Scores]) -> Scores:
    """The scores of several streams, their documents one after another."""
    bytes_ = None if any(p.bytes is None for p in parts) else torch.cat([p.bytes.cpu() for p in parts])
    return Scores(*(torch.cat([getattr(p, k).cpu() for p in parts]) for k in ("nats", "hits", "tokens")), bytes_)


@torch.no_grad()
def score_sequence_model(model: SequenceLM, ids: torch.Tensor, documents: Documents | None = None) -> Scores:
    """An end-to-end baseline's scores of ids[1:] (each model's ``score_features``: its recurrence, or sliding
    windows, then its head)."""
    scorer = Scorer(ids, documents)
    for first, features in model.score_features(ids):
        scorer.add_rows(first, *model.head_scores(features, scorer.targets(first, features.shape[0])))
    return scorer.result()


def score_ngram(model: KneserNey, stream: np.ndarray, documents: Documents | None = None) -> Scores:
    """The n-gram model's scores of stream[1:] (the full distribution of each position, for the top-1 hit)."""
    scorer = Scorer(torch.from_numpy(np.asarray(stream, dtype=np.int64)), documents)
    nats, hits = model.score_rows(stream)
    scorer.add_rows(0, torch.from_numpy(nats), torch.from_numpy(hits))
    return scorer.result()
