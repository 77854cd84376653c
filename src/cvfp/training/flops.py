"""Training FLOPs, counted analytically (multiply-add = 2 FLOPs).

The usual rule: a forward pass costs 2 FLOPs per parameter per token and a
backward pass twice that, so training costs 6 x parameters x tokens. What each
model trains, on how many tokens, differs:

- CVFP: Phase 1 runs the ContextBlock over all T train tokens once per
  iteration after the random one, forward and backward (6 P_ctx T) or forward
  only when the block is frozen (random-context: 2 P_ctx T); Phase 2 trains
  TokenBlock + head on the cached contexts (6 (P_tok + P_head) T per epoch)
  and needs the layer contexts once per epoch: one ContextBlock forward
  (2 P_ctx T) per epoch when they are recomputed (the default), once in all
  when they are stored.
- CVFP with ``phase1.objective = "lm"`` adds, per end-to-end epoch and token, K ContextBlock forwards
  (2 P_ctx each), K' backwards through the last sweeps (4 P_ctx each) and the TokenBlock + head's 6 P.
- LSTM: 6 P T per epoch.
- Transformer: 6 P T per epoch plus attention, 6 L W M per token (M the width) (Kaplan et
  al. 2020's 2 n_layer n_ctx d_attn forward, with n_ctx the window W).
- n-gram: counting, no floating-point training (0).

The head's P is what a token's loss multiplies: all its weights for a linear head, and for an adaptive head
its shortlist product plus each tail cluster's weights times the share of train targets in that cluster
(``HeadMixin.head_parameters_per_token``): the tails are computed only for their own rows.

Validation and test scoring are not counted.
"""

from __future__ import annotations


def cvfp_flops(
    context_params: int,
    phase2_params: float,
    tokens: int,
    phase1_iterations: int,
    updated: bool,
    epochs: int,
    recomputed: bool = True,
) -> int:
    sweeps = max(0, phase1_iterations - 1)
    phase1 = sweeps * (6 if updated else 2) * context_params * tokens
    contexts = (epochs if recomputed else 1) * 2 * context_params * tokens
    return round(phase1 + contexts + epochs * 6 * phase2_params * tokens)


def sequence_flops(params: float, tokens: int, epochs: int, attention_per_token: int = 0) -> int:
    return round(epochs * tokens * (6 * params + attention_per_token))


def end_to_end_flops(context_params: int, token_params: float, tokens: int, phase1) -> int:
    """The end-to-end epochs of ``phase1.objective = "lm"`` (``training.end_to_end``)."""
    per_token = (2 * phase1.lm_sweeps + 4 * phase1.lm_grad_sweeps) * context_params + 6 * token_params
    return round(phase1.lm_epochs * tokens * per_token)
