"""Phase 1: fixed-point training of the ContextBlock (algorithm §2).

All T contexts of the training stream are updated in parallel, one Jacobi
sweep per iteration: token i's input context is the previous iteration's
output for token i-1 (token 0 wraps around to token T-1), plus Gaussian noise.
The ContextBlock is pushed toward a fixed point ``c_i = f(c_{i-1}, x_i)`` by
(1-w)*MSE(out, prev) plus w times a diversity term, with ONE clipped Adam
step per iteration on gradients accumulated over all mini-batches.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from cvfp.config import Phase1Config
from cvfp.distributed import Shard, all_gather_tensor, all_reduce_sum
from cvfp.models import CVFPModel
from cvfp.training.divergence import require_finite
from cvfp.training.diversity import DIVERSITY
from cvfp.training.resume import StateStore, load_optimizer_state, optimizer_state, take_prefix, with_prefix

log = logging.getLogger(__name__)

# The original's diversity term D(X) = -||X - mean_rows(X)||_F / rows (algorithm §2); the others: cvfp.training.diversity.
diversity_loss = DIVERSITY["seed"]


def converged_rows(out: torch.Tensor, prev: torch.Tensor, threshold: float) -> torch.Tensor:
    """Number of rows with mean((out - prev)^2) < threshold (algorithm §2, step 3), as a tensor."""
    return ((out - prev).pow(2).mean(dim=1) < threshold).sum()


def convergence_rate(out: torch.Tensor, prev: torch.Tensor, threshold: float) -> float:
    """Share of rows that have converged."""
    return converged_rows(out, prev, threshold).item() / out.shape[0]


def should_stop(iteration: int, rate: float, cfg: Phase1Config, previous_rate: float | None = None) -> bool:
    """Whether Phase 1 stops after iteration ``iteration`` (0 = the random start).

    Never before iteration + 1 >= min_iterations (with min 5 the earliest
    stop is after iteration 4, i.e. after 4 Adam steps). Then, by
    ``cfg.stop_rule``: "rate", the original's (algorithm §2, step 3): the
    convergence rate has reached stop_rate; "improvement": the rate rose by
    less than min_improvement since ``previous_rate``; "fixed": never.
    """
    if iteration + 1 < cfg.min_iterations:
        return False
    if cfg.stop_rule == "rate":
        return rate >= cfg.stop_rate
    if cfg.stop_rule == "improvement":
        return previous_rate is not None and rate - previous_rate < cfg.min_improvement
    return False


def counter_seed(seed: int, iteration: int, batch: int) -> int:
    """The seed of batch ``batch``'s draw at ``iteration`` under ``phase1.noise = "counter"``: a fixed
    mix of the three (distinct triples give distinct, well-spread seeds)."""
    return (seed * 0x9E3779B97F4A7C15 + iteration * 0xBF58476D1CE4E5B9 + batch * 0x94D049BB133111EB) % 2**63


@dataclasses.dataclass
class Phase1Result:
    contexts: torch.Tensor  # (T, C), or the shard's rows: the final iteration's outputs (prev)
    iterations: int  # iterations run, counting the random iteration 0
    final_rate: float  # convergence rate of the last iteration
    converged: bool  # stopped early by the stop rule rather than by max_iterations
    history: list[dict]  # one record per iteration >= 1
    seconds: float


class _Noise:
    """Phase 1's random numbers: iteration 0's contexts and each iteration's input noise (``Phase1Config.noise``)."""

    def __init__(self, cfg: Phase1Config, generator: torch.Generator, width: int, device: torch.device) -> None:
        self.cfg, self.generator, self.width, self.device = cfg, generator, width, device
        self.seed = generator.initial_seed()

    def draw(self, start: int, end: int, iteration: int) -> torch.Tensor:
        """Standard normal (end - start, C) for rows [start, end) at ``iteration`` (0: the random start)."""
        if self.cfg.noise == "stream":
            return torch.randn(end - start, self.width, generator=self.generator, device=self.device)
        rows, batch = [], self.cfg.batch_tokens
        for s in range(start, end, batch):
            g = torch.Generator(device=self.device).manual_seed(counter_seed(self.seed, iteration, s // batch))
            rows.append(torch.randn(min(end, s + batch) - s, self.width, generator=g, device=self.device))
        return torch.cat(rows)


class _Saver:
    """Phase 1's resume state (``training.resume``): saved every ``save_every`` iterations and at the end."""

    def __init__(
        self,
        state: StateStore | None,
        cfg: Phase1Config,
        shard: Shard,
        model: CVFPModel,
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
    ) -> None:
        self.state = state if cfg.save_every else None
        self.every, self.model, self.optimizer, self.generator = cfg.save_every, model, optimizer, generator
        self.name = "phase1" if shard.world == 1 else f"phase1-rank{shard.rank}"

    def load(self, on_record: Callable[[dict], None] | None) -> tuple[torch.Tensor, dict] | None:
        """A saved state restored into the model, Adam and the generator: (contexts, info), or None."""
        saved = self.state.load(self.name) if self.state is not None else None
        if saved is None:
            return None
        tensors, info = saved
        self.model.context_layers.load_state_dict(take_prefix("block.", tensors))
        self.generator.set_state(tensors["generator"])
        if not info["done"]:
            load_optimizer_state(self.optimizer, take_prefix("adam.", tensors), info["param_groups"])
        for record in info["history"]:
            if on_record is not None:
                on_record(record)
        last = info["history"][-1]["iteration"] if info["history"] else 0
        log.info("phase 1: resumed after iteration %d (%s)", last, self.state.folder)
        return tensors["contexts"], info

    def save(self, iteration: int, contexts: torch.Tensor, history: list[dict]) -> None:
        if self.state is None or iteration % self.every:
            return
        adam, groups = optimizer_state(self.optimizer)
        tensors = {**self._tensors(contexts), **with_prefix("adam.", adam)}
        self.state.save(
            self.name, tensors, {"done": False, "iteration": iteration, "history": history, "param_groups": groups}
        )

    def save_result(self, result: Phase1Result) -> None:
        if self.state is not None:
            info = {
                "done": True,
                "iterations": result.iterations,
                "final_rate": result.final_rate,
                "converged": result.converged,
                "history": result.history,
                "seconds": result.seconds,
            }
            self.state.save(self.name, self._tensors(result.contexts), info)

    def _tensors(self, contexts: torch.Tensor) -> dict[str, torch.Tensor]:
        block = with_prefix("block.", self.model.context_layers.state_dict())
        return {**block, "contexts": contexts, "generator": self.generator.get_state()}


def _check_shard(shard: Shard | None, n: int, cfg: Phase1Config) -> Shard:
    shard = shard or Shard(0, n, n)
    if shard.total != n:
        raise ValueError(f"the shard is of a {shard.total}-token stream, not of these {n} tokens")
    if shard.world > 1 and cfg.noise != "counter":
        raise ValueError('a sharded Phase 1 needs phase1.noise = "counter" (see Phase1Config.noise)')
    if shard.start % cfg.batch_tokens or (shard.end != n and shard.end % cfg.batch_tokens):
        raise ValueError(f"shard rows [{shard.start}, {shard.end}) are not whole batches of {cfg.batch_tokens}")
    return shard


def _last_row(rows: torch.Tensor, shard: Shard) -> torch.Tensor:
    """The previous rank's last row of ``rows`` (the last rank's for rank 0); one process: its own."""
    last = rows[-1:].float().clone()
    return all_gather_tensor(last)[(shard.rank - 1) % shard.world] if shard.world > 1 else last


def _iteration(
    model: CVFPModel,
    ids: torch.Tensor,
    prev: torch.Tensor,
    iteration: int,
    cfg: Phase1Config,
    optimizer: torch.optim.Optimizer,
    noise: _Noise,
    shard: Shard,
) -> dict:
    """One Phase 1 iteration (algorithm §2): a Jacobi sweep over this rank's rows, batch by batch, each batch's
    output overwriting ``prev`` in place, gradients accumulated, then one clipped Adam step. Returns the record."""
    t0 = time.perf_counter()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.zero_grad(set_to_none=True)
    device, w, update = ids.device, cfg.dist_reg_weight, cfg.update_context_block
    num_batches = math.ceil(ids.shape[0] / cfg.batch_tokens)  # the whole stream's: the loss is a mean over batches
    sums = torch.zeros(3, device=device)  # loss, fixed-point loss, diversity loss (means over batches)
    converged = torch.zeros((), device=device)  # rows, summed over batches
    nonfinite = torch.zeros((), device=device)  # context entries that are NaN or inf
    # The input of the first row (token 0's wrap-around, or the previous shard's last row), then of each
    # batch's first row: copies, as prev is overwritten.
    carry, lo = _last_row(prev, shard), shard.start
    for s in range(lo, shard.end, cfg.batch_tokens):
        e = min(shard.end, s + cfg.batch_tokens)
        old = prev[s - lo : e - lo].float()
        inputs = torch.cat([carry, old[:-1]]) + noise.draw(s, e, iteration) * cfg.context_noise  # prev[i-1] + noise
        carry = old[-1:].clone()
        with torch.set_grad_enabled(update):
            out = model.context_step(inputs, model.step_inputs(ids, s, e))[-1]
            fp, div = torch.nn.functional.mse_loss(out, old), DIVERSITY[cfg.diversity](out)
            loss = (1 - w) * fp + w * div
        if update:
            (loss / num_batches).backward()
        out = out.detach()
        sums += torch.stack([loss.detach(), fp.detach(), div.detach()]) / num_batches
        converged += converged_rows(out, old, cfg.convergence_threshold)
        nonfinite += (~torch.isfinite(out)).sum()
        prev[s - lo : e - lo] = out
    if shard.world > 1:  # the whole stream's sums, and its gradient, on every rank
        all_reduce_sum(
            [sums, converged, nonfinite, *([p.grad for p in params if p.grad is not None] if update else [])]
        )
    grad_norm = 0.0
    if update:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip).item()
        optimizer.step()
    loss_sum, fp_sum, div_sum = sums.tolist()
    return {
        "phase": 1,
        "iteration": iteration,
        "converged_rate": converged.item() / ids.shape[0],
        "loss": loss_sum,
        "fixed_point_loss": fp_sum,
        "diversity_loss": div_sum,
        "grad_norm": grad_norm,
        "seconds": time.perf_counter() - t0,
        "nonfinite": nonfinite.item(),
    }


def _require_finite(record: dict, last: dict | None) -> None:
    require_finite(
        f"Phase 1 iteration {record['iteration']}",
        {
            "loss": record["loss"],
            "fixed-point loss": record["fixed_point_loss"],
            "diversity loss": record["diversity_loss"],
            "contexts (non-finite entries)": math.inf if record.pop("nonfinite") else 0.0,
        },
        f"iteration {last['iteration']}, loss {last['loss']:.5f}, converged {100 * last['converged_rate']:.1f}%"
        if last
        else "none (the first iteration)",
        "lower phase1.learning_rate or phase1.dist_reg_weight",
    )


def run_phase1(
    model: CVFPModel,
    ids: torch.Tensor,
    cfg: Phase1Config,
    generator: torch.Generator,
    on_record: Callable[[dict], None] | None = None,
    progress: bool = True,
    store_dtype: torch.dtype = torch.float32,
    state: StateStore | None = None,
    shard: Shard | None = None,
) -> Phase1Result:
    """Train ``model``'s ContextBlock on the stream ``ids`` (T,) in place.

    One (T, C) tensor of contexts is the only per-token state: each sweep
    overwrites it batch by batch, keeping the one old row the next batch's
    shifted input still needs (and the old last row, token 0's wrap-around
    input), so every batch reads exactly the previous iteration's contexts,
    as in the original. ``store_dtype`` is that tensor's precision (16-bit
    contexts halve it; the losses and rates are computed in float32). The
    noise is drawn batch by batch from ``generator``: on CPU the same numbers
    as one whole-stream draw when batch_tokens x C is a multiple of 16
    (tests/test_phases.py), on CUDA a different draw of the same distribution.

    With a ``state`` store, the state is saved every ``cfg.save_every``
    iterations and at the end, and a saved state is continued from.

    Sharded (``shard`` of more than one rank, under torchrun): this rank
    holds only its rows' contexts and runs only its batches. The input of
    its first row, the previous rank's last context (token 0's wrap-around:
    the last rank's), is exchanged every iteration; gradients, losses and
    converged rows are summed over the ranks before the one Adam step, so
    every rank takes the single-process step up to float summation order.
    Needs ``cfg.noise = "counter"`` (each batch's noise from its own seed).
    """
    start_time = time.perf_counter()
    shard = _check_shard(shard, ids.shape[0], cfg)
    optimizer = torch.optim.Adam(list(model.context_layers.parameters()), lr=cfg.learning_rate)
    noise = _Noise(cfg, generator, model.cfg.context_dim, ids.device)
    saver = _Saver(state, cfg, shard, model, optimizer, generator)
    # Iteration 0: random contexts, no forward, no update.
    prev = (noise.draw(shard.start, shard.end, 0) * cfg.init_context_std).to(store_dtype)
    history: list[dict] = []
    first = 1
    resumed = saver.load(on_record)
    if resumed is not None:
        prev, info = resumed[0].to(ids.device), resumed[1]
        history = info["history"]
        if info["done"]:
            return Phase1Result(
                prev, info["iterations"], info["final_rate"], info["converged"], history, info["seconds"]
            )
        first = info["iteration"] + 1
    # ``iteration`` is the last iteration run, so a state saved after the last one resumes to the right count.
    iteration, stopped = first - 1, False
    bar = tqdm(range(first, cfg.max_iterations), desc="phase 1", disable=not progress, leave=False)
    for iteration in bar:
        record = _iteration(model, ids, prev, iteration, cfg, optimizer, noise, shard)
        _require_finite(record, history[-1] if history else None)
        history.append(record)
        log.info("phase1 iter %d: converged %.1f%% loss %.5f (fixed-point %.5f, diversity %.5f) %.2fs", iteration,
                 100 * record["converged_rate"], record["loss"], record["fixed_point_loss"], record["diversity_loss"],
                 record["seconds"])  # fmt: skip
        if on_record is not None:
            on_record(record)
        bar.set_postfix(conv=f"{100 * record['converged_rate']:.1f}%")
        previous_rate = history[-2]["converged_rate"] if len(history) > 1 else None
        stopped = should_stop(iteration, record["converged_rate"], cfg, previous_rate)
        if stopped:
            break
        saver.save(iteration, prev, history)
    bar.close()
    rate = history[-1]["converged_rate"] if history else 0.0
    result = Phase1Result(prev, iteration + 1, rate, stopped, history, time.perf_counter() - start_time)
    saver.save_result(result)
    return result
