"""Context caches for Phase 2 (algorithm §3): storage only; the recurrence is ``cvfp.models.recurrence``.

A cache answers one question: the layer contexts [c_1..c_L] that the frozen
ContextBlock produced at rows [start, end) of a stream. Row i pairs with step
input x_i and target token i+1, so a stream of T tokens gives T-1 rows.
Phase 2 and evaluation only use the ``ContextSource`` protocol.

- ``ContextCache`` (default) stores one (C,) context per token: the input
  context of the next row (Phase 1's final contexts for the original's parallel
  train cache, the true recurrence's c_L for a sequential cache), and
  recomputes a batch's L layer contexts with one frozen ContextBlock forward
  when asked: L times less memory than storing them, for a few percent of a
  Phase 2 step.
- ``TensorCache`` stores every layer's contexts (T - 1, D): the reference
  path, selected by ``phase2.recompute_contexts=false``; the two agree to
  float rounding (tests/test_phases.py).
- ``ShareCache``: a rank's share of a sharded point's train cache, the rows
  of its part of every Phase 2 batch (``distributed.BatchShare``), recomputed
  as ``ContextCache`` does; ``share_cache`` builds it from Phase 1's shards.
- ``ReplacedContexts``: a source whose rows read another row's contexts, or
  zeros: the context-use diagnostic (what the TokenBlock gets from the context).
"""

from __future__ import annotations

import bisect
from typing import Protocol

import torch
from tqdm.auto import tqdm

from cvfp.distributed import BatchShare, Shard, exchange_rows
from cvfp.models import CVFPModel
from cvfp.models.recurrence import input_contexts, jacobi, layer_contexts, sequential

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ContextSource(Protocol):
    def __len__(self) -> int: ...

    def layers(self, start: int, end: int) -> list[torch.Tensor]:
        """[c_1..c_L] (end - start, D_l each) as float32 on the compute device."""
        ...

    def inputs(self, start: int, end: int) -> torch.Tensor:
        """The ContextBlock's input contexts (end - start, C): the previous token's final context, zeros at row 0."""
        ...

    def nbytes(self) -> int: ...


class ContextCache:
    """Rows recomputed from each token's stored input context (see the module doc)."""

    def __init__(self, model: CVFPModel, ids: torch.Tensor, previous: torch.Tensor, dtype: str = "float32") -> None:
        if previous.shape[0] < ids.shape[0] - 2:
            raise ValueError(f"{previous.shape[0]} contexts cannot serve the {ids.shape[0] - 1} rows of the stream")
        self.model, self.ids = model, ids
        self.previous = previous if previous.dtype == DTYPES[dtype] else previous.to(DTYPES[dtype])

    def __len__(self) -> int:
        return self.ids.shape[0] - 1

    @torch.no_grad()
    def layers(self, start: int, end: int) -> list[torch.Tensor]:
        return layer_contexts(self.model, self.ids, self.previous, start, end)

    def inputs(self, start: int, end: int) -> torch.Tensor:
        return input_contexts(self.previous, start, end)

    def nbytes(self) -> int:
        return self.previous.numel() * self.previous.element_size()


class ReplacedContexts:
    """Every row of ``source`` reads the contexts (layer and input contexts alike) of row ``rows[i]``: with a
    permutation, another token's; with ``rows=None``, zeros. The source's rows are computed once, whole."""

    def __init__(self, source: ContextSource, rows: torch.Tensor | None) -> None:
        self.source, self.rows = source, rows
        self._layers: list[torch.Tensor] | None = None
        self._inputs: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.source)

    def _replaced(self, full: torch.Tensor, start: int, end: int) -> torch.Tensor:
        if self.rows is None:
            return torch.zeros_like(full[start:end])
        return full[self.rows[start:end].to(full.device)]

    def layers(self, start: int, end: int) -> list[torch.Tensor]:
        if self._layers is None:
            self._layers = self.source.layers(0, len(self))
        return [self._replaced(c, start, end) for c in self._layers]

    def inputs(self, start: int, end: int) -> torch.Tensor:
        if self._inputs is None:
            self._inputs = self.source.inputs(0, len(self))
        return self._replaced(self._inputs, start, end)

    def nbytes(self) -> int:
        return self.source.nbytes()


class TensorCache:
    """All rows' layer contexts held in one (n, D) tensor, optionally in a lower precision."""

    def __init__(
        self, model: CVFPModel, flat: torch.Tensor, dtype: str = "float32", inputs: torch.Tensor | None = None
    ) -> None:
        self.widths = model.context_widths
        self.device = flat.device
        self.data = flat.to(DTYPES[dtype])
        self.input_data = None if inputs is None else inputs.to(DTYPES[dtype])

    def __len__(self) -> int:
        return self.data.shape[0]

    def layers(self, start: int, end: int) -> list[torch.Tensor]:
        return list(torch.split(self.data[start:end].to(self.device, torch.float32), self.widths, dim=-1))

    def inputs(self, start: int, end: int) -> torch.Tensor:
        if self.input_data is None:
            raise ValueError("this cache stored no input contexts (build it with store_all)")
        return self.input_data[start:end].to(self.device, torch.float32)

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


class ShareCache:
    """Rows of some ranges of a stream (``ranges``: sorted, disjoint (start, end) row ranges), each row held as
    its input context (``inputs``, the ranges' rows in order) and its layer contexts recomputed when asked.
    ``layers`` and ``inputs`` take global rows inside one held range; ``len`` is the whole stream's rows."""

    def __init__(
        self,
        model: CVFPModel,
        ids: torch.Tensor,
        ranges: list[tuple[int, int]],
        inputs: torch.Tensor,
        dtype: str = "float32",
    ) -> None:
        self.model, self.ids = model, ids
        self.starts = [s for s, _ in ranges]
        self.ends = [e for _, e in ranges]
        self.offsets = [0]
        for s, e in ranges:
            self.offsets.append(self.offsets[-1] + e - s)
        if inputs.shape[0] != self.offsets[-1]:
            raise ValueError(f"{inputs.shape[0]} input contexts for {self.offsets[-1]} held rows")
        self.data = inputs.to(DTYPES[dtype])

    def __len__(self) -> int:
        return self.ids.shape[0] - 1

    def _local(self, start: int, end: int) -> slice:
        i = bisect.bisect_right(self.starts, start) - 1
        if start == end:
            return slice(0, 0)
        if i < 0 or end > self.ends[i]:
            raise ValueError(f"rows [{start}, {end}) are not inside one range this rank holds")
        first = self.offsets[i] + start - self.starts[i]
        return slice(first, first + end - start)

    def inputs(self, start: int, end: int) -> torch.Tensor:
        return self.data[self._local(start, end)].float()

    @torch.no_grad()
    def layers(self, start: int, end: int) -> list[torch.Tensor]:
        return self.model.context_step(self.inputs(start, end), self.model.step_inputs(self.ids, start, end))

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


def share_cache(
    model: CVFPModel,
    ids: torch.Tensor,
    previous: torch.Tensor,
    shard: Shard,
    shard_batch: int,
    share: BatchShare,
    batch: int,
    dtype: str = "float32",
) -> ShareCache:
    """This rank's ``ShareCache`` of the train stream ``ids``: its part of every batch of ``batch`` rows,
    from each token's final context ``previous`` held in contiguous shards (``shard``, cut in whole batches
    of ``shard_batch``: Phase 1's), exchanged once (``distributed.exchange_rows``). Row i reads
    previous[i - 1], row 0 zeros, as ``parallel_cache``."""
    n = ids.shape[0] - 1
    ranges = [share.rows(s, min(n, s + batch)) for s in range(0, n, batch)]
    ranges = [(s, e) for s, e in ranges if e > s]
    held = torch.cat([torch.arange(s, e) for s, e in ranges]) if ranges else torch.zeros(0, dtype=torch.long)
    inputs = exchange_rows(previous, shard, shard_batch, (held - 1).clamp(min=0))
    inputs[(held == 0).to(inputs.device)] = 0  # row 0's input: c_0 = 0
    return ShareCache(model, ids, ranges, inputs, dtype)


def rows(source: ContextSource, start: int, end: int) -> torch.Tensor:
    """Flat contexts [c_1 ; ... ; c_L] (end - start, D) of any source."""
    return torch.cat(source.layers(start, end), dim=-1)


def store_all(model: CVFPModel, source: ContextCache, dtype: str, batch_tokens: int) -> TensorCache:
    """The reference path: every row of ``source`` computed once and stored."""
    n = len(source)
    flat = torch.empty(n, sum(model.context_widths), device=source.ids.device, dtype=DTYPES[dtype])
    for s in range(0, n, batch_tokens):
        flat[s : min(n, s + batch_tokens)] = rows(source, s, min(n, s + batch_tokens))
    return TensorCache(model, flat, dtype, inputs=source.inputs(0, n))


def cache_from_contexts(
    model: CVFPModel, ids: torch.Tensor, previous: torch.Tensor, dtype: str, recompute: bool, batch_tokens: int
) -> ContextCache | TensorCache:
    """The cache of a stream whose rows read ``previous`` (each token's input context for the next): recomputing
    (``recompute``) or every layer stored (the reference path)."""
    cache = ContextCache(model, ids, previous, dtype)
    return cache if recompute else store_all(model, cache, dtype, batch_tokens)


def parallel_cache(
    model: CVFPModel,
    ids: torch.Tensor,
    prev: torch.Tensor,
    batch_tokens: int,
    dtype: str = "float32",
    recompute: bool = True,
) -> ContextCache | TensorCache:
    """Seed train cache: row i from input context prev[i-1] (row 0: zeros), no noise.

    ``prev`` (T, C) are Phase 1's final contexts (stored as they are: no copy
    when already in ``dtype``).
    """
    return cache_from_contexts(model, ids, prev, dtype, recompute, batch_tokens)


@torch.no_grad()
def recurrence_finals(
    model: CVFPModel,
    ids: torch.Tensor,
    dtype: str = "float32",
    progress: bool = False,
    jacobi_tolerance: float | None = None,
    jacobi_max_sweeps: int = 0,
    cuda_graphs: bool = True,
) -> tuple[torch.Tensor, dict | None]:
    """c_L of rows 0..T-2 of ``ids`` by the true recurrence, stored in ``dtype``.

    With ``jacobi_tolerance`` they come from Jacobi sweeps instead
    (``cvfp.models.recurrence.jacobi``); the second value then records the
    sweeps and the final residual (None for the sequential loop).
    """
    if jacobi_tolerance is not None:
        result = jacobi(model, ids, jacobi_tolerance, jacobi_max_sweeps)
        info = {
            "sweeps": result.sweeps,
            "residual": result.residual,
            "converged": result.converged,
            "tolerance": jacobi_tolerance,
        }
        return result.finals.to(DTYPES[dtype]), info
    n = ids.shape[0] - 1
    out = torch.empty(n, model.cfg.context_dim, device=ids.device, dtype=DTYPES[dtype])
    with tqdm(total=n, desc="sequential contexts", disable=not progress, leave=False) as bar:
        for s, finals in sequential(model, ids, cuda_graphs=cuda_graphs):
            out[s : s + finals.shape[0]] = finals
            bar.update(finals.shape[0])
    return out, None


def sequential_cache(
    model: CVFPModel,
    ids: torch.Tensor,
    dtype: str = "float32",
    progress: bool = False,
    recompute: bool = True,
    batch_tokens: int = 4096,
    cuda_graphs: bool = True,
) -> ContextCache | TensorCache:
    """The true recurrence from c_0 = 0 over ``ids`` (T,): rows 0..T-2."""
    finals, _ = recurrence_finals(model, ids, dtype, progress, cuda_graphs=cuda_graphs)
    return cache_from_contexts(model, ids, finals, dtype, recompute, batch_tokens)
