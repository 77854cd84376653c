"""Beyond the original: the contexts trained for the task, in parallel, through the fixed point
(``phase1.objective = "lm"``).

Phase 1 (algorithm §2) computes all T contexts at once by Jacobi sweeps of the parallel map
c_i = f(c_{i-1}, x_i), warm-started at the previous iteration's contexts, and trains f to be a fixed point and
diverse; nothing trains it to be useful. Here each step takes a batch of B consecutive tokens, computes their
contexts by K = ``lm_sweeps`` sweeps of the same map within the batch (the context before the batch is the stored
one; the sweeps start at the batch's stored contexts), reads them with the TokenBlock and head, and
backpropagates the next-token loss through the last K' = ``lm_grad_sweeps`` sweeps only (K' = 1: the one-step,
or phantom, gradient of implicit models), one clipped step of Phase 2's Adam (``phase2.adam``,
``phase2.weight_decay``) at ``lm_learning_rate`` on ContextBlock, TokenBlock and head together.
The last sweep's contexts replace the stored ones, so the stored contexts follow the map as it trains; every
``lm_refresh_every`` epochs they are recomputed by the exact sequential recurrence. K >= B sweeps from any start
are the exact recurrence within the batch (Gonzalez et al. 2024).

Each epoch records the Jacobi residual (the RMS change of the last sweep), the share of tokens whose last sweep
changed them by less than ``phase1.convergence_threshold``, the stored contexts' gap to the true recurrence, and
the map's contraction: the largest singular value of dc_i / dc_{i-1} at sampled tokens.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

import torch

from cvfp.config import RunConfig
from cvfp.metrics import perplexity
from cvfp.models import CVFPModel
from cvfp.training.caches import recurrence_finals
from cvfp.training.divergence import require_finite
from cvfp.training.next_token import make_adam
from cvfp.training.resume import StateStore, load_optimizer_state, optimizer_state, take_prefix, with_prefix
from cvfp.training.sharding import GAP_TOKENS

log = logging.getLogger(__name__)

# Tokens at which the contraction is estimated (the context gap is measured on the point's GAP_TOKENS).
CONTRACTION_TOKENS = 16


@dataclasses.dataclass
class EndToEndResult:
    contexts: torch.Tensor  # (T, C): the stored contexts after the last epoch
    history: list[dict]  # one record per epoch
    seconds: float


def jacobi(
    model: CVFPModel, x: torch.Tensor, boundary: torch.Tensor, start: torch.Tensor, sweeps: int, grad_sweeps: int
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """``sweeps`` Jacobi sweeps of the parallel map over one batch: x (B, X) its step inputs, boundary (1, C)
    the context before it, start (B, C) where the sweeps start. Returns the last sweep's layer contexts
    [c_1..c_L], its input contexts (B, C) (row i: the context before token i), and the last sweep's change of
    each row (mean square). The graph runs through the last ``grad_sweeps`` sweeps only."""
    z = start.detach()
    for k in range(sweeps):
        if k == sweeps - grad_sweeps:
            z = z.detach()
        with torch.set_grad_enabled(torch.is_grad_enabled() and k >= sweeps - grad_sweeps):
            inputs = torch.cat([boundary.detach(), z[:-1]])
            layers = model.context_step(inputs, x)
        change = (layers[-1].detach() - z.detach()).pow(2).mean(dim=1)
        z = layers[-1]
    return layers, inputs, change


def run_end_to_end(
    model: CVFPModel,
    ids: torch.Tensor,
    contexts: torch.Tensor,
    cfg: RunConfig,
    on_record: Callable[[dict], None] | None = None,
    state: StateStore | None = None,
) -> EndToEndResult:
    """Train the whole model in place on the stream ``ids`` (T,) from the stored ``contexts`` (T, C), epoch by
    epoch (saved after each to ``state``, and continued from a saved one)."""
    start_time, p1 = time.perf_counter(), cfg.phase1
    params = [p for p in model.parameters() if p.requires_grad]
    rate = p1.lm_rate(cfg.phase2.learning_rate)
    optimizer = make_adam(params, cfg.phase2.replace(learning_rate=rate))  # Phase 2's Adam
    stored, history = contexts.float().clone(), []
    saved = state.load("end-to-end") if state is not None else None
    if saved is not None:
        tensors, info = saved
        model.load_state_dict(take_prefix("model.", tensors), strict=False)
        load_optimizer_state(optimizer, take_prefix("adam.", tensors), info["param_groups"])
        stored, history = tensors["contexts"].to(ids.device), info["history"]
        for record in history:
            if on_record is not None:
                on_record(record)
        log.info("end-to-end: resumed after epoch %d", len(history))
    for epoch in range(len(history) + 1, p1.lm_epochs + 1):
        if p1.lm_refresh_every and epoch > 1 and (epoch - 1) % p1.lm_refresh_every == 0:
            stored = exact_contexts(model, ids)
        record = {"phase": "end-to-end", "epoch": epoch, **_epoch(model, ids, stored, cfg, optimizer, params)}
        record |= diagnostics(model, ids, stored, cfg.seed)
        require_finite(f"end-to-end epoch {epoch}", {"train loss": math.log(record["train_ppl"])},
                       f"epoch {epoch - 1}" if history else "none", "lower phase1.lm_learning_rate")  # fmt: skip
        history.append(record)
        log.info("end-to-end epoch %d: train_ppl=%.1f residual=%.4f converged=%.1f%% gap=%.3f contraction=%.3f",
                 epoch, record["train_ppl"], record["residual"], 100 * record["converged_rate"],
                 record["context_gap"], record["contraction_max"])  # fmt: skip
        if on_record is not None:
            on_record(record)
        if state is not None:
            adam, groups = optimizer_state(optimizer)
            model_state = {k: v for k, v in model.state_dict().items() if k.startswith(TRAINED)}
            tensors = {**with_prefix("model.", model_state), **with_prefix("adam.", adam), "contexts": stored}
            state.save("end-to-end", tensors, {"history": history, "param_groups": groups})
    return EndToEndResult(stored, history, time.perf_counter() - start_time)


# What the end-to-end epochs train (the frozen table and input LayerNorm are not parameters).
TRAINED = ("context_layers.", "token_layers.", "head.")


def _epoch(model: CVFPModel, ids: torch.Tensor, stored: torch.Tensor, cfg: RunConfig, optimizer, params: list) -> dict:
    """One pass over the stream in batches of phase2.batch_size, one Adam step per batch; ``stored`` refreshed in
    place by each batch's last sweep."""
    t0, p1, p2 = time.perf_counter(), cfg.phase1, cfg.phase2
    n, zero = ids.shape[0] - 1, stored.new_zeros(1, stored.shape[1])
    nats, change_sum, converged = 0.0, 0.0, 0
    for s in range(0, n, p2.batch_size):
        e = min(n, s + p2.batch_size)
        x = model.step_inputs(ids, s, e)
        boundary = zero if s == 0 else stored[s - 1 : s]
        layers, inputs, change = jacobi(model, x, boundary, stored[s:e], p1.lm_sweeps, p1.lm_grad_sweeps)
        features = model.token_features(layers, x, inputs if model.reads_previous else None)
        loss = model.head_loss(features, ids[s + 1 : e + 1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, p2.grad_clip)
        optimizer.step()
        stored[s:e] = layers[-1].detach()
        nats += loss.item() * (e - s)
        change_sum += change.sum().item()
        converged += int((change < p1.convergence_threshold).sum())
    return {
        "train_ppl": perplexity(nats / n),
        "residual": math.sqrt(change_sum / n),
        "converged_rate": converged / n,
        "seconds": time.perf_counter() - t0,
    }


@torch.no_grad()
def exact_contexts(model: CVFPModel, ids: torch.Tensor) -> torch.Tensor:
    """The final contexts (T - 1, C) of the true sequential recurrence, plus the stored last row's place (T, C)."""
    finals = recurrence_finals(model, ids)[0].float()
    return torch.cat([finals, finals[-1:]])


def diagnostics(model: CVFPModel, ids: torch.Tensor, stored: torch.Tensor, seed: int) -> dict:
    """The stored contexts' relative gap to the true recurrence (first GAP_TOKENS tokens, final layer) and the
    map's largest singular value dc_i / dc_{i-1} at CONTRACTION_TOKENS seeded tokens (max and mean)."""
    n = min(GAP_TOKENS, ids.shape[0] - 1)
    with torch.no_grad():
        exact = recurrence_finals(model, ids[: n + 1])[0].float()
        gap = (torch.linalg.norm(stored[:n] - exact) / torch.linalg.norm(exact).clamp_min(1e-12)).item()
    g = torch.Generator().manual_seed(seed)
    positions = torch.randint(1, ids.shape[0] - 1, (CONTRACTION_TOKENS,), generator=g).tolist()
    norms = []
    for i in positions:
        x = model.step_inputs(ids, i, i + 1)
        jac = torch.func.jacrev(lambda c, x=x: model.context_step(c, x)[-1])(stored[i - 1 : i].detach())
        norms.append(torch.linalg.matrix_norm(jac.reshape(jac.shape[1], -1), ord=2).item())
    return {"context_gap": gap, "contraction_max": max(norms), "contraction_mean": sum(norms) / len(norms)}
