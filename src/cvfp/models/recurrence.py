"""The recurrence, in one place: the step window, and the true sequential loop.

A CVFP model reads a stream through its ContextBlock, one token at a time:

    c_0 = 0;  (c_1..c_L)_i = ContextBlock(c_{i-1}, x_i);  c_i = (c_L)_i

where x_i is the step window (the embeddings of tokens i-k+1..i). Everything
a token's TokenLayers read is a function of two things: the previous token's
final context c_{i-1} and x_i. So a stream's contexts are stored as its final
contexts (T, C) and every layer's contexts are recomputed from them in one
batched forward (``layer_contexts``), never stored L times over.

Three ways to get the final contexts, each a fast path beside a reference:

- ``sequential_reference``: the definition, ``model.context_step`` per token.
- ``sequential``: the token half ``W_x x_i + b`` of every ContextLayer does
  not depend on the recurrence, so it is computed for a whole chunk of tokens
  in one GEMM per layer; each step is then only the C x C context half, the
  residual and the LayerNorm. Several independent streams (documents) run
  side by side as rows of one batch.
- ``jacobi``: sweeps of the parallel map ``c_i <- f(c_{i-1}, x_i)`` over the
  whole stream until the largest change of any token's context is below a
  tolerance (beyond the original; see ``jacobi``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cvfp.models.layers import context_step

if TYPE_CHECKING:
    from cvfp.models.model import CVFPModel

# Rows of the stream handled per chunk by the sequential loop and the sweeps.
CHUNK = 4096


def input_contexts(previous: torch.Tensor, start: int, end: int, first: torch.Tensor | None = None) -> torch.Tensor:
    """Input contexts of rows [start, end): previous[i - 1], and ``first`` (zeros if None) for row 0."""
    if start > 0:
        return previous[start - 1 : end - 1].float()
    head = previous.new_zeros(1, previous.shape[1]).float() if first is None else first.reshape(1, -1).float()
    return torch.cat([head, previous[: end - 1].float()], dim=0)


def layer_contexts(
    model: CVFPModel,
    ids: torch.Tensor,
    previous: torch.Tensor,
    start: int,
    end: int,
    first: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """[c_1..c_L] (end - start, D_l each) of rows [start, end) of the stream ``ids``.

    ``previous`` (>= end - 1 rows, C): the final context of each token, the
    input of the next; row 0 reads ``first`` (zeros: the recurrence's c_0).
    """
    return model.context_step(input_contexts(previous, start, end, first), model.step_inputs(ids, start, end))


@torch.no_grad()
def sequential_reference(model: CVFPModel, ids: torch.Tensor) -> torch.Tensor:
    """Final contexts (T - 1, C) of rows 0..T-2 of ``ids`` (T,): the plain per-token loop."""
    n = ids.shape[0] - 1
    c = torch.zeros(1, model.cfg.context_dim, device=ids.device)
    out = torch.empty(n, model.cfg.context_dim, device=ids.device)
    for i in range(n):
        c = model.context_step(c, model.step_inputs(ids, i, i + 1))[-1]
        out[i] = c[0]
    return out


@torch.no_grad()
def recur(model: CVFPModel, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The recurrence over S streams side by side from contexts ``c`` (S, C).

    ``x`` (S, n, X): step inputs. Returns the final contexts (S, n, C); the
    last row of each stream is where to continue from.
    """
    layers = list(model.context_layers)
    parts = [layer.token_part(x) for layer in layers]  # (S, n, D_l), or the bias (D_l,): one GEMM per layer
    # W_c^T (D_in, D_l) of each layer as its own contiguous copy: a batch-1 step is memory-bound, and a dense
    # matrix reads faster than the column block of the stored [W_c W_x] (bench/recurrence.py measures it).
    weights = [layer.context_weight().contiguous() for layer in layers]
    out = x.new_empty(x.shape[0], x.shape[1], model.cfg.context_dim)
    for j in range(x.shape[1]):
        for layer, part, weight in zip(layers, parts, weights):
            c = context_step(layer, c, part[:, j] if part.dim() == 3 else part, weight)
        out[:, j] = c
    return out


class StepBlock:
    """``steps`` steps of the recurrence for S streams on static buffers: the body a CUDA graph replays.

    A batch-1 step is about L x 4 small kernels; launched one by one from
    Python, the launches cost more than the work on a GPU. With ``graph=True``
    (CUDA only) the body is captured once into a CUDA graph and each block of
    ``steps`` tokens is one replay. Without it the same body runs eagerly: the
    CPU twin that tests check against the plain loop. The block reads the
    model's weights when built: build a new one after they change.
    """

    def __init__(self, model: CVFPModel, streams: int, steps: int, graph: bool) -> None:
        self.layers = list(model.context_layers)
        device = model.embedding.device
        self.steps = steps
        self.weights = [layer.context_weight().contiguous() for layer in self.layers]
        self.parts = [
            torch.zeros(streams, steps, layer.out, device=device) if layer.tok_in else None for layer in self.layers
        ]
        self.c = torch.zeros(streams, model.cfg.context_dim, device=device)
        self.out = torch.zeros(streams, steps, model.cfg.context_dim, device=device)
        self.graph = None
        if graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._body()  # warm-up outside the capture, as CUDA graphs require
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._body()

    def _body(self) -> None:
        c = self.c
        for j in range(self.steps):
            for layer, part, weight in zip(self.layers, self.parts, self.weights):
                c = context_step(layer, c, layer.fc.bias if part is None else part[:, j], weight)
            self.out[:, j] = c
        self.c.copy_(c)

    def run(self, parts: list[torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        """Final contexts (S, k, C) of k <= steps steps from ``c`` (S, C); ``parts``: each layer's token half
        (S, k, D_l), or its bias for a layer without token input. A short block pads its missing steps with
        zeros and ignores their outputs."""
        k = next((p.shape[1] for p in parts if p.dim() == 3), None)
        if k is None:
            raise ValueError("a StepBlock needs at least one layer with token input")
        for buf, part in zip(self.parts, parts):
            if buf is not None:
                buf[:, :k].copy_(part)
                buf[:, k:].zero_()
        self.c.copy_(c)
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body()
        return self.out[:, :k].clone()


# Tokens per CUDA graph replay: long enough to amortise the replay, short enough to capture quickly.
GRAPH_STEPS = 64


@torch.no_grad()
def sequential(
    model: CVFPModel, ids: torch.Tensor, chunk: int = CHUNK, cuda_graphs: bool = True
) -> Iterator[tuple[int, torch.Tensor]]:
    """The true recurrence from c_0 = 0 over ``ids`` (T,), ``chunk`` rows at a time.

    Yields (start, final contexts (B, C)) for rows start..start+B-1 of
    0..T-2; only the running context is carried between chunks. On CUDA,
    with ``cuda_graphs``, the steps run as replays of one captured StepBlock.
    """
    n = ids.shape[0] - 1
    c = torch.zeros(1, model.cfg.context_dim, device=ids.device)
    block = None
    if cuda_graphs and ids.is_cuda and n > 0:
        block = StepBlock(model, 1, GRAPH_STEPS, graph=True)
    for s in range(0, n, chunk):
        x = model.step_inputs(ids, s, min(n, s + chunk))[None]
        if block is None:
            finals = recur(model, x, c)[0]
        else:
            finals = recur_blocks(model, block, x, c)[0]
        c = finals[-1:]
        yield s, finals


@torch.no_grad()
def recur_blocks(model: CVFPModel, block: StepBlock, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``recur`` run as blocks of ``block.steps`` steps of a StepBlock."""
    parts = [layer.token_part(x) for layer in model.context_layers]
    outs = []
    for b in range(0, x.shape[1], block.steps):
        out = block.run([p[:, b : b + block.steps] if p.dim() == 3 else p for p in parts], c)
        c = out[:, -1]
        outs.append(out)
    return torch.cat(outs, dim=1)


@torch.no_grad()
def sequential_streams(model: CVFPModel, streams: list[torch.Tensor]) -> list[torch.Tensor]:
    """Final contexts (len - 1, C) of each of several independent streams, each from c_0 = 0.

    The streams run side by side as rows of one batch, padded at their ends
    (the recurrence is causal, so padding after a stream's last token changes
    none of its contexts).
    """
    longest = max(s.shape[0] for s in streams)
    x = torch.stack([F.pad(model.step_inputs(s, 0, s.shape[0] - 1), (0, 0, 0, longest - s.shape[0])) for s in streams])
    c = torch.zeros(len(streams), model.cfg.context_dim, device=x.device)
    finals = recur(model, x, c)
    return [finals[i, : s.shape[0] - 1] for i, s in enumerate(streams)]


@dataclasses.dataclass
class JacobiResult:
    finals: torch.Tensor  # (T - 1, C)
    sweeps: int
    residual: float  # largest |change| of any context entry in the last sweep
    converged: bool


@torch.no_grad()
def jacobi(model: CVFPModel, ids: torch.Tensor, tolerance: float, max_sweeps: int, chunk: int = CHUNK) -> JacobiResult:
    """The recurrence's final contexts by sweeps of the parallel map (beyond the original).

    Start from c_i = 0 for every row; each sweep recomputes every row from
    its predecessor's current context, chunk by chunk in stream order (so a
    chunk's first row already reads this sweep's value of the row before it:
    Jacobi inside a chunk, Gauss-Seidel between chunks). A trained
    ContextBlock is close to a contraction, so the error shrinks geometrically;
    and after s sweeps at least the first s rows are exact whatever the
    block, so T - 1 sweeps always reach the recurrence. Stops once the largest
    change of any entry in a sweep is <= ``tolerance`` (that sweep counted).
    """
    n = ids.shape[0] - 1
    finals = torch.zeros(n, model.cfg.context_dim, device=ids.device)
    residual, sweeps = float("inf"), 0
    for sweeps in range(1, max_sweeps + 1):
        change = torch.zeros((), device=ids.device)  # on the device: one host copy per sweep, not per chunk
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            new = layer_contexts(model, ids, finals, s, e)[-1]
            change = torch.maximum(change, (new - finals[s:e]).abs().max())
            finals[s:e] = new
        residual = change.item()
        if residual <= tolerance:
            break
    return JacobiResult(finals, sweeps, residual, residual <= tolerance)
