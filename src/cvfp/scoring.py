"""Scoring, in one place: the nats, top-1 hits, tokens and bytes of next-token predictions, per document.

Every model is scored through a ``Scorer`` over one stream: it is fed rows (row p predicts the stream's
token p + 1) as logits (``add_logits``: cross-entropy and the top-1 hit taken in place, ``row_scores``)
or as already computed per-row nats and hits (``add_rows``, the n-gram model's), and sums them per
document (``Documents``: where each document of the stream starts, and the UTF-8 bytes of each target).
``Scores`` holds the sums: per document, so that statistics can resample documents (conversations), and
in total, the metrics every report prints (``Scores.metrics``). A sharded point sums the same tensors
over its ranks (``Scores.tensors``).

``row_scores`` is the fast path (the logits buffer is overwritten in place: max, subtract, exp, sum, in
the passes the training loss uses); ``reference_row_scores`` is the plain one (``F.cross_entropy`` and
``argmax``), and tests hold them equal.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from cvfp.metrics import bits_per_byte, perplexity
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

    def result(self) -> Scores:
        return self.scores


def reference_row_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row cross-entropy (B,) and top-1 hits (B,) of logits (B, V) against targets (B,): the plain path."""
    return F.cross_entropy(logits.float(), targets, reduction="none"), logits.argmax(dim=-1) == targets


def row_scores(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference_row_scores`` in place: **overwrites** ``logits`` (pass a buffer nothing else reads). The
    top-1 hits come from the row maxima (``top1_hits``) before the buffer is overwritten."""
    logits = logits.float()  # a copy only for 16-bit logits
    top, target_logit = logits.amax(dim=-1), logits.gather(1, targets[:, None])[:, 0]
    hits = top1_hits(logits, targets, top, target_logit)
    _, _, nats = exp_shifted(logits, target_logit, top)
    return nats, hits


def top1_hits(
    logits: torch.Tensor, targets: torch.Tensor, top: torch.Tensor, target_logit: torch.Tensor
) -> torch.Tensor:
    """Which rows (B,) of logits (B, V) have their argmax at the target, given the row maxima ``top`` (B,) and
    the targets' logits (B,).

    Only a row whose target's logit is the maximum can hit; argmax (whose rule names the first of equal maxima)
    runs on those rows alone, usually a few, instead of a max-with-index pass over the whole buffer, which costs
    several times ``amax`` (``bench/head_throughput.py``). When many rows reach the maximum (an untrained head's
    equal logits), one argmax over the buffer is cheaper than copying them out.
    """
    hit = target_logit == top
    rows = hit.nonzero()[:, 0]
    if len(rows) > logits.shape[0] // 4:
        return logits.argmax(dim=-1) == targets
    if len(rows):
        hit[rows] = logits[rows].argmax(dim=-1) == targets[rows]
    return hit


def exp_shifted(logits: torch.Tensor, target_logit: torch.Tensor, top: torch.Tensor):
    """Overwrite float32 ``logits`` (B, V) with ``exp(logits - top)``, ``top`` (B,) its row maxima (the
    unnormalised softmax), and return it, its row sums (B,) and each row's loss ``top + log(sum) -
    target_logit`` (B,), ``target_logit`` being the targets' logits read before."""
    probs = logits.sub_(top[:, None]).exp_()
    norm = probs.sum(dim=-1)
    return probs, norm, top + norm.log() - target_logit


def add_scores(parts: list[Scores]) -> Scores:
    """The scores of several streams, their documents one after another."""
    bytes_ = None if any(p.bytes is None for p in parts) else torch.cat([p.bytes.cpu() for p in parts])
    return Scores(*(torch.cat([getattr(p, k).cpu() for p in parts]) for k in ("nats", "hits", "tokens")), bytes_)


@torch.no_grad()
def score_sequence_model(model: SequenceLM, ids: torch.Tensor, documents: Documents | None = None) -> Scores:
    """An end-to-end baseline's scores of ids[1:] (each model's ``score_logits``: its recurrence, or sliding
    windows)."""
    scorer = Scorer(ids, documents)
    for first, logits in model.score_logits(ids):
        scorer.add_logits(first, logits)
    return scorer.result()


def score_ngram(model: KneserNey, stream: np.ndarray, documents: Documents | None = None) -> Scores:
    """The n-gram model's scores of stream[1:] (the full distribution of each position, for the top-1 hit)."""
    scorer = Scorer(torch.from_numpy(np.asarray(stream, dtype=np.int64)), documents)
    nats, hits = model.score_rows(stream)
    scorer.add_rows(0, torch.from_numpy(nats), torch.from_numpy(hits))
    return scorer.result()
