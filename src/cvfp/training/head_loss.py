"""The head's cross-entropy without the whole batch's logits in memory.

A batch of B rows through a V-way head has B x V logits (8,192 x 50,257
floats = 1.6 GB at the original's preset), and autograd keeps them, their softmax
and their gradient alive together. ``linear_cross_entropy`` computes the
mean loss of ``F.cross_entropy(F.linear(t, weight, bias), targets)`` in
chunks of rows, and forms each chunk's gradients (with respect to t, the
weight and the bias) while that chunk's logits exist, so at most one chunk
of logits is ever alive. Same GEMMs as the plain path, no recomputation;
the plain path (``reference_cross_entropy``) is kept beside it and
``tests/test_phases.py`` checks that they agree, loss and gradients.

Scoring (no gradients) takes the same passes in place: ``cvfp.scoring``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cvfp.models.layers import head_logits
from cvfp.scoring import exp_shifted

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
