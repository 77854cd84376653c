"""Interpolated Kneser-Ney n-gram model: the floor every neural model must beat.

Counted on the training stream; no parameters are trained. For order n and a
history h of the last n-1 tokens (Chen & Goodman 1999, interpolated KN):

    p_n(w | h) = max(c_n(h w) - d_n, 0) / c_n(h .) + d_n * T_n(h) / c_n(h .) * p_{n-1}(w | h')

where h' drops h's oldest token, c_n are raw counts at the highest order and
continuation counts N1+(. h w) (distinct left neighbours) below it, T_n(h)
the number of distinct w after h, and d_n = n1 / (n1 + 2 n2) from the
counts of counts. A history never seen backs off entirely to p_{n-1}. The
lowest level interpolates the continuation unigram with the uniform
distribution over the vocabulary, so every p_n sums to 1 over all V tokens.
Positions with fewer than n-1 tokens before them use the longest history
they have.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import numpy as np

from cvfp.config import ModelConfig


class KneserNey:
    """Counted on ``stream`` (kept: it is the model, and what a checkpoint stores); ``cfg`` the config it
    was built from (``arch = "ngram"``), when there is one."""

    def __init__(self, stream: np.ndarray, order: int, vocab_size: int, cfg: ModelConfig | None = None) -> None:
        if order < 1:
            raise ValueError(f"n-gram order must be >= 1, got {order}")
        self.order, self.vocab_size, self.cfg = order, vocab_size, cfg
        self.stream = np.asarray(stream, dtype=np.int64)
        tokens = [int(t) for t in stream]
        raw = Counter(tuple(tokens[i : i + order]) for i in range(len(tokens) - order + 1))
        # counts[k]: history (k-1 tokens) -> {w: count}; raw at the top order, continuation counts below.
        self.counts: list[dict[tuple, dict[int, int]]] = [{} for _ in range(order + 1)]
        grams = raw
        for k in range(order, 0, -1):
            table: dict[tuple, dict[int, int]] = defaultdict(dict)
            for gram, c in grams.items():
                table[gram[:-1]][gram[-1]] = c
            self.counts[k] = dict(table)
            if k > 1:  # continuation counts of the (k-1)-grams: distinct left neighbours
                grams = Counter(gram[1:] for gram in grams)
        self.discounts = [0.0] + [self._discount(self.counts[k]) for k in range(1, order + 1)]
        self.totals = [{h: sum(ws.values()) for h, ws in self.counts[k].items()} for k in range(order + 1)]
        unigram = self.counts[1].get((), {})
        if unigram:
            d1, total1 = self.discounts[1], sum(unigram.values())
            self.unigram = np.full(vocab_size, d1 * len(unigram) / total1 / vocab_size)
            for w, c in unigram.items():
                self.unigram[w] += max(c - d1, 0.0) / total1
        else:  # a stream shorter than the order: nothing counted
            self.unigram = np.full(vocab_size, 1.0 / vocab_size)

    @staticmethod
    def _discount(table: dict[tuple, dict[int, int]]) -> float:
        values = Counter(c for ws in table.values() for c in ws.values())
        n1, n2 = values.get(1, 0), values.get(2, 0)
        return min(max(n1 / (n1 + 2 * n2), 0.05), 0.95) if n1 + n2 else 0.5

    def _levels(self, history: tuple[int, ...]):
        """(continuations {w: count}, their total, discount) of every seen history suffix of
        order 2 up to the longest usable one, lowest order first (unseen ones back off)."""
        for k in range(2, min(self.order, len(history) + 1) + 1):
            h = history[len(history) - (k - 1) :]
            total = self.totals[k].get(h)  # None: this history was never seen
            if total:
                yield self.counts[k][h], total, self.discounts[k]

    def prob(self, history: tuple[int, ...], w: int) -> float:
        """p(w | history): the readable scalar reference of ``distribution``."""
        p = float(self.unigram[w])
        for ws, total, d in self._levels(history):
            p = max(ws.get(w, 0) - d, 0.0) / total + d * len(ws) / total * p
        return p

    def distribution(self, history: tuple[int, ...]) -> np.ndarray:
        """p(. | history) over the whole vocabulary (V,)."""
        p = self.unigram.copy()
        for ws, total, d in self._levels(history):
            p *= d * len(ws) / total
            idx = np.fromiter(ws.keys(), dtype=np.int64, count=len(ws))
            p[idx] += np.maximum(np.fromiter(ws.values(), dtype=float, count=len(ws)) - d, 0.0) / total
        return p

    def score_rows(self, stream: np.ndarray, with_accuracy: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Nats (T - 1,) and top-1 hits (T - 1,) of predicting each of stream[1:] from its left part (without
        ``with_accuracy`` the hits are all False and only the target's probability is computed)."""
        tokens = [int(t) for t in stream]
        nats, hits = np.zeros(len(tokens) - 1), np.zeros(len(tokens) - 1, dtype=bool)
        for i in range(1, len(tokens)):
            history = tuple(tokens[max(0, i - self.order + 1) : i])
            if with_accuracy:
                dist = self.distribution(history)
                p = dist[tokens[i]]
                hits[i - 1] = np.argmax(dist) == tokens[i]
            else:
                p = self.prob(history, tokens[i])
            nats[i - 1] = -math.log(p)
        return nats, hits
