"""The output head, in one place: t (B, E) -> a distribution over the V tokens, its loss and its scores.

``ModelConfig.head`` chooses it (``build_head``): "full", the original's untied, zero-initialised
Linear(E -> V) with bias; "tied", logits = t @ table^T with the frozen embedding table and no bias; or
"adaptive", the adaptive softmax of Grave et al. (2017) (``AdaptiveHead``): a small head over the most
frequent tokens and a few tail clusters with narrower projections, an exact, normalised distribution over
the whole vocabulary at a fraction of the full head's cost. ``HeadMixin`` gives every model (CVFP designs and
the baselines) the same three uses of its head: ``head_loss`` (training), ``head_scores`` (each row's nats
and top-1 hit, for scoring) and ``head_output`` (a row of V scores whose softmax is the distribution, for
sampling and the harness).

A linear head's loss and scores never hold a whole batch's logits: ``linear_cross_entropy`` computes the
mean loss of ``F.cross_entropy(F.linear(t, weight, bias), targets)`` in chunks of rows and forms each chunk's
gradients (with respect to t, the weight and the bias) while that chunk's logits exist; ``row_scores`` takes
each row's cross-entropy and top-1 hit in place in one reused buffer of logits. The plain paths
(``reference_cross_entropy``, ``reference_row_scores``) stand beside them and the tests hold them equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cvfp.config import ConfigError, ModelConfig


def head_logits(
    t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The head: ``t @ weight.T + bias`` (B, V), equal to ``F.linear(t, weight, bias)`` to float rounding.

    Written into ``out`` when given (a buffer reused from chunk to chunk: a fresh output of B x V floats per
    call costs its page faults), the bias added in place rather than through ``F.linear``'s path (the bias
    broadcast into the output, then a GEMM that reads it back), which is slower on CPU
    (``bench/head_throughput.py`` compares the two).
    """
    logits = torch.mm(t, weight.t(), out=out) if out is not None else torch.mm(t, weight.t())
    return logits if bias is None else logits.add_(bias)


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


# Rows per chunk of logits: 1,024 x 50,257 floats is 206 MB.
CHUNK_ROWS = 1024


def reference_cross_entropy(
    t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of ``t @ weight.T + bias`` (B, V) against ``targets`` (B,)."""
    return F.cross_entropy(F.linear(t, weight, bias), targets)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, weight, bias, targets, chunk):
        need_t, need_w, need_b = ctx.needs_input_grad[:3]
        rows = t.shape[0]
        grad_t = torch.empty_like(t) if need_t else None
        grad_w = grad_b = None
        total = torch.zeros((), dtype=torch.float32, device=t.device)
        buffer = t.new_empty(min(rows, chunk), weight.shape[0])  # one chunk of logits, reused by every chunk
        for s in range(0, rows, chunk):
            e = min(rows, s + chunk)
            logits = head_logits(t[s:e], weight, bias, out=buffer[: e - s]).float()  # (b, V), changed in place
            target_logit = logits.gather(1, targets[s:e, None])[:, 0]
            probs, norm, nats = exp_shifted(logits, target_logit, logits.amax(dim=-1))  # no index: 8x cheaper
            total += nats.sum()
            # d(mean loss)/d(logits) = (softmax - one-hot) / rows, still in the same buffer.
            grad = probs.div_(norm[:, None] * rows)
            grad[torch.arange(e - s, device=t.device), targets[s:e]] -= 1.0 / rows
            grad = grad.to(t.dtype)
            if need_t:
                torch.mm(grad, weight, out=grad_t[s:e])
            if need_w:
                grad_w = grad.t() @ t[s:e] if grad_w is None else grad_w.addmm_(grad.t(), t[s:e])
            if need_b:
                grad_b = grad.sum(dim=0) if grad_b is None else grad_b.add_(grad.sum(dim=0))
        ctx.save_for_backward(grad_t, grad_w, grad_b)
        return total / rows

    @staticmethod
    def backward(ctx, grad_out):
        grads = ctx.saved_tensors
        # The loss is usually the graph's output (upstream gradient 1): on CPU, where checking is free, skip
        # the multiplication, one pass over a weight-sized tensor.
        if grad_out.device.type == "cpu" and float(grad_out) == 1.0:
            return (*grads, None, None)
        return (*(None if g is None else g * grad_out for g in grads), None, None)


def linear_cross_entropy(
    t: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    chunk: int = CHUNK_ROWS,
) -> torch.Tensor:
    """``reference_cross_entropy`` computed ``chunk`` rows of logits at a time (see the module doc)."""
    if not torch.is_grad_enabled() or not (
        t.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        total = sum(
            F.cross_entropy(F.linear(t[s : s + chunk], weight, bias).float(), targets[s : s + chunk], reduction="sum")
            for s in range(0, t.shape[0], chunk)
        )
        return total / t.shape[0]
    return _LinearCrossEntropy.apply(t, weight, bias, targets, chunk)


class AdaptiveHead(nn.AdaptiveLogSoftmaxWithLoss):
    """The adaptive softmax (Grave et al. 2017) over the vocabulary in frequency order.

    Token v sits at position ``rank[v]`` of the frequency order (``order_by_frequency``: the train stream's
    counts, most frequent first, ties by id); positions [0, c_1) are the head's shortlist, [c_i, c_{i+1})
    tail cluster i, whose logits come through a projection of width E / div_value^(i+1). ``rank`` is a
    persistent buffer, so a checkpoint holds the clusters. It starts where the full head starts, at the
    uniform distribution over the vocabulary: the head's and the tails' output weights at zero and each
    cluster's head bias at ln(its size), so every token has probability 1/V (with all-zero biases a tail token
    would start at 1 / (shortlist x cluster size), far below 1/V, and learn slowly); the projections start at
    Normal(0, 1/E) from the run's generator.
    """

    def __init__(
        self, width: int, vocab: int, cutoffs: tuple[int, ...], div_value: float, generator: torch.Generator
    ) -> None:
        kept = [c for c in cutoffs if 0 < c < vocab - 1]
        if not kept:
            raise ConfigError(f"adaptive head: no cutoff of {list(cutoffs)} lies inside a {vocab}-token vocabulary")
        if int(width // div_value ** len(kept)) < 1:
            raise ConfigError(
                f"adaptive head: the last tail cluster's projection would have width {width} // "
                f"{div_value}^{len(kept)} = 0; lower model.adaptive_div_value or use fewer model.adaptive_cutoffs"
            )
        super().__init__(width, vocab, kept, div_value=div_value, head_bias=True)
        self.register_buffer("rank", torch.arange(vocab))
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()
            sizes = torch.tensor([self.cutoffs[i + 1] - self.cutoffs[i] for i in range(self.n_clusters)])
            self.head.bias[self.shortlist_size :] = sizes.double().log().float()
            for projection, output in self.tail:
                projection.weight.copy_(torch.randn(projection.weight.shape, generator=generator) / width**0.5)
                output.weight.zero_()

    @torch.no_grad()
    def order_by_frequency(self, ids: torch.Tensor) -> None:
        """Set the clusters from the token counts of ``ids`` (the train stream): most frequent first."""
        counts = torch.bincount(ids.flatten().cpu(), minlength=self.n_classes)
        order = torch.argsort(-counts, stable=True)
        self.rank.copy_(torch.empty_like(order).scatter_(0, order, torch.arange(len(order))).to(self.rank.device))

    def loss(self, t: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the exact distribution against ``targets`` (token ids)."""
        return super().forward(t, self.rank[targets]).loss

    @torch.no_grad()
    def row_scores(self, t: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's nats (the exact log-probability of its target) and top-1 hit (the argmax of the full
        distribution), with one product of the head: a tail is read only for the rows whose target lies in it,
        and the full distribution only for rows whose best head entry is a cluster (``predict``'s rule: a
        shortlist entry at least as likely as every cluster beats every tail token)."""
        ranked = self.rank[targets]
        head = torch.log_softmax(self.head(t), dim=-1)  # (B, shortlist + clusters)
        shortlist = self.shortlist_size
        nats = -head.gather(1, ranked.clamp(max=shortlist - 1)[:, None])[:, 0]
        for i, tail in enumerate(self.tail):
            rows = ((ranked >= self.cutoffs[i]) & (ranked < self.cutoffs[i + 1])).nonzero()[:, 0]
            if len(rows):
                inner = torch.log_softmax(tail(t[rows]), dim=-1).gather(1, (ranked[rows] - self.cutoffs[i])[:, None])
                nats[rows] = -(head[rows, shortlist + i] + inner[:, 0])
        best = head.argmax(dim=-1)
        to_cluster = (best >= shortlist).nonzero()[:, 0]
        if len(to_cluster):
            best[to_cluster] = self.log_prob(t[to_cluster]).argmax(dim=-1)
        return nats, best == ranked

    def log_probs(self, t: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, V) over token ids."""
        return self.log_prob(t)[:, self.rank]


def build_head(cfg: ModelConfig, generator: torch.Generator) -> nn.Module | None:
    """The head of ``cfg.head``: a zero-initialised Linear (full), None (tied: the frozen table), or adaptive."""
    if cfg.head == "tied":
        return None
    if cfg.head == "adaptive":
        return AdaptiveHead(cfg.embed_dim, cfg.vocab_size, cfg.adaptive_cutoffs, cfg.adaptive_div_value, generator)
    head = nn.Linear(cfg.embed_dim, cfg.vocab_size)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def head_parameters(cfg: ModelConfig) -> int:
    """Trainable parameters of ``cfg``'s head: (E + 1) x V (full), 0 (tied), or an adaptive head's own count."""
    if cfg.head == "full":
        return (cfg.embed_dim + 1) * cfg.vocab_size
    head = build_head(cfg, torch.Generator())
    return 0 if head is None else sum(p.numel() for p in head.parameters())


class HeadMixin:
    """The three uses of a model's head (``self.head`` from ``build_head``, ``self.embedding`` the frozen table)."""

    head: nn.Module | None
    embedding: torch.Tensor

    @property
    def adaptive(self) -> bool:
        return isinstance(self.head, AdaptiveHead)

    def head_weights(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A linear head's weight (V, E) and bias (V,): the frozen table and no bias when tied."""
        if self.adaptive:
            raise TypeError("an adaptive head has no single weight matrix: use head_loss / head_scores / head_output")
        if self.head is None:
            return self.embedding, None
        return self.head.weight, self.head.bias

    def prepare_head(self, train_ids: torch.Tensor) -> None:
        """Before training: an adaptive head takes its clusters from the train stream's token counts."""
        if self.adaptive:
            self.head.order_by_frequency(train_ids)

    def head_parameters_per_token(self, train_ids: torch.Tensor) -> float:
        """The head's weights a token's loss multiplies (``training.flops``): every weight of a linear head; an
        adaptive head's shortlist product plus each tail's weights times its share of the train targets."""
        if not self.adaptive:
            return 0 if self.head is None else sum(p.numel() for p in self.head.parameters())
        head = self.head
        ranked = head.rank[train_ids[1:].to(head.rank.device)].float()
        total = float(sum(p.numel() for p in head.head.parameters()))
        for i, tail in enumerate(head.tail):
            share = ((ranked >= head.cutoffs[i]) & (ranked < head.cutoffs[i + 1])).float().mean().item()
            total += share * sum(p.numel() for p in tail.parameters())
        return total

    def head_loss(self, t: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the head's distribution at t (B, E) against targets (B,)."""
        if self.adaptive:
            return self.head.loss(t, targets)
        return linear_cross_entropy(t, *self.head_weights(), targets)

    @torch.no_grad()
    def head_scores(
        self, t: torch.Tensor, targets: torch.Tensor, buffer: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's nats (B,) and top-1 hit (B,); a linear head's logits go into ``buffer`` when given."""
        if self.adaptive:
            return self.head.row_scores(t, targets)
        return row_scores(head_logits(t, *self.head_weights(), out=buffer), targets)

    def head_output(self, t: torch.Tensor) -> torch.Tensor:
        """(B, V) scores whose softmax is the head's distribution: logits, or an adaptive head's log-probs."""
        if self.adaptive:
            return self.head.log_probs(t)
        return F.linear(t, *self.head_weights())
