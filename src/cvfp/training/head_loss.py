"""The head's cross-entropy without the whole batch's logits in memory.

A batch of B rows through a V-way head has B x V logits (8,192 x 50,257
floats = 1.6 GB at the seed preset), and autograd keeps them, their softmax
and their gradient alive together. ``linear_cross_entropy`` computes the
mean loss of ``F.cross_entropy(F.linear(t, weight, bias), targets)`` in
chunks of rows, and forms each chunk's gradients (with respect to t, the
weight and the bias) while that chunk's logits exist, so at most one chunk
of logits is ever alive. Same GEMMs as the plain path, no recomputation;
the plain path (``reference_cross_entropy``) is kept beside it and
``tests/test_phases.py`` checks that they agree, loss and gradients.

Scoring (no gradients) has the same shape of fast path: ``nats_and_hits``
takes the cross-entropy sum and the top-1 hits of a chunk of logits in
place, in the passes the training loss already uses (max, subtract, exp,
sum; the hits from the max, ``top1_hits``), instead of a log-softmax copy
plus a separate argmax;
``reference_nats_and_hits`` is the plain one, and the tests hold them equal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cvfp.models.layers import head_logits

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
            probs, norm, nats = _exp_shifted(logits, target_logit, logits.amax(dim=-1))  # no index: 8x cheaper
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
    if not torch.is_grad_enabled() or not (t.requires_grad or weight.requires_grad
                                           or (bias is not None and bias.requires_grad)):  # fmt: skip
        total = sum(
            F.cross_entropy(F.linear(t[s : s + chunk], weight, bias).float(), targets[s : s + chunk], reduction="sum")
            for s in range(0, t.shape[0], chunk)
        )
        return total / t.shape[0]
    return _LinearCrossEntropy.apply(t, weight, bias, targets, chunk)


def reference_nats_and_hits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (float64 scalar) and top-1 hits of logits (B, V) against targets (B,)."""
    nats = F.cross_entropy(logits.float(), targets, reduction="sum").double()
    return nats, (logits.argmax(dim=-1) == targets).sum()


def nats_and_hits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``reference_nats_and_hits`` in place: **overwrites** ``logits`` (pass a buffer nothing else reads).
    The top-1 hits come from the row maxima (``top1_hits``) before the buffer is overwritten."""
    logits = logits.float()  # a copy only for 16-bit logits
    top, target_logit = logits.amax(dim=-1), logits.gather(1, targets[:, None])[:, 0]
    hits = top1_hits(logits, targets, top, target_logit)
    _, _, nats = _exp_shifted(logits, target_logit, top)
    return nats.sum().double(), hits


def top1_hits(
    logits: torch.Tensor, targets: torch.Tensor, top: torch.Tensor, target_logit: torch.Tensor
) -> torch.Tensor:
    """How many rows of logits (B, V) have their argmax at the target, given the row maxima ``top`` (B,) and
    the targets' logits (B,).

    Only a row whose target's logit is the maximum can hit; argmax (whose rule names the first of equal maxima)
    runs on those rows alone, usually a few, instead of a max-with-index pass over the whole buffer, which costs
    8x ``amax`` on a 512 x 49,152 buffer. When many rows reach the maximum (an untrained head's equal logits),
    one argmax over the buffer is cheaper than copying them out.
    """
    hit = target_logit == top
    rows = hit.nonzero()[:, 0]
    if len(rows) > logits.shape[0] // 4:
        return (logits.argmax(dim=-1) == targets).sum()
    if len(rows):
        hit[rows] = logits[rows].argmax(dim=-1) == targets[rows]
    return hit.sum()


def _exp_shifted(logits: torch.Tensor, target_logit: torch.Tensor, top: torch.Tensor):
    """Overwrite float32 ``logits`` (B, V) with ``exp(logits - top)``, ``top`` (B,) its row maxima (the
    unnormalised softmax), and return it, its row sums (B,) and each row's loss ``top + log(sum) -
    target_logit`` (B,), ``target_logit`` being the targets' logits read before."""
    probs = logits.sub_(top[:, None]).exp_()
    norm = probs.sum(dim=-1)
    return probs, norm, top + norm.log() - target_logit
