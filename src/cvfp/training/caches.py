"""Context caches for Phase 2 (SPEC 3).

A cache answers one question: the flat contexts [c_1 ; ... ; c_L] (B, D)
that the frozen ContextBlock produced at positions [start, end) of a stream.
Row i pairs with step input x_i and target token i+1, so a stream of N
tokens gives N-1 rows. Phase 2 and evaluation only use the ``ContextSource``
protocol, so a streaming or recomputing cache can replace ``TensorCache``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from tqdm.auto import tqdm

from cvfp.models import CVFPModel

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ContextSource(Protocol):
    def __len__(self) -> int: ...

    def rows(self, start: int, end: int) -> torch.Tensor:
        """Flat contexts (end - start, D) as float32 on the compute device."""
        ...


class TensorCache:
    """All rows held in one (n, D) tensor, optionally in a lower precision."""

    def __init__(self, flat: torch.Tensor, dtype: str = "float32") -> None:
        self.device = flat.device
        self.data = flat.to(DTYPES[dtype])

    def __len__(self) -> int:
        return self.data.shape[0]

    def rows(self, start: int, end: int) -> torch.Tensor:
        return self.data[start:end].to(self.device, torch.float32)

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def final_layer(self, width: int) -> torch.Tensor:
        """(n, C): the last layer's contexts c_L (the last ``width`` columns)."""
        return self.data[:, -width:].float()


@torch.no_grad()
def parallel_cache(
    model: CVFPModel, ids: torch.Tensor, prev: torch.Tensor, batch_tokens: int, dtype: str = "float32"
) -> TensorCache:
    """Seed train cache: row i from input context prev[i-1] (row 0: zeros), no noise.

    ``prev`` (N, C) are Phase 1's final contexts; rows 0..N-2 are stored.
    """
    n = ids.shape[0] - 1
    inputs = torch.cat([torch.zeros_like(prev[:1]), prev[:-1]], dim=0)
    chunks = []
    for s in range(0, n, batch_tokens):
        e = min(n, s + batch_tokens)
        chunks.append(model.flatten_contexts(model.context_step(inputs[s:e], model.step_inputs(ids, s, e))))
    return TensorCache(torch.cat(chunks, dim=0), dtype)


@torch.no_grad()
def sequential_chunks(
    model: CVFPModel, ids: torch.Tensor, chunk: int = 4096
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """The true recurrence from c_0 = 0 over ``ids`` (N,), ``chunk`` rows at a time.

    Yields (start, x (B, X), flat contexts (B, D)) for rows start..start+B-1 of
    0..N-2; only the running context is carried between chunks.
    """
    n = ids.shape[0] - 1
    c = torch.zeros(1, model.cfg.context_dim, device=ids.device)
    for s in range(0, n, chunk):
        x = model.step_inputs(ids, s, min(n, s + chunk))
        rows = torch.empty(x.shape[0], sum(model.context_widths), device=ids.device)
        for j in range(x.shape[0]):
            layers = model.context_step(c, x[j : j + 1])
            rows[j] = model.flatten_contexts(layers)[0]
            c = layers[-1]
        yield s, x, rows


@torch.no_grad()
def sequential_cache(
    model: CVFPModel, ids: torch.Tensor, dtype: str = "float32", progress: bool = False
) -> TensorCache:
    """True recurrence from c_0 = 0 over ``ids`` (N,); rows 0..N-2 are stored."""
    n = ids.shape[0] - 1
    out = torch.empty(n, sum(model.context_widths), device=ids.device)
    with tqdm(total=n, desc="sequential contexts", disable=not progress, leave=False) as bar:
        for s, _, rows in sequential_chunks(model, ids):
            out[s : s + rows.shape[0]] = rows
            bar.update(rows.shape[0])
    return TensorCache(out, dtype)
