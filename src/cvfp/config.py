"""Typed configuration: the single source of truth for every setting.

Every config is a frozen dataclass. ``from_dict`` rejects unknown keys and
wrong types with a message naming the field; ``__post_init__`` rejects invalid
values. Each field is documented once, here, by the comment above it.
"""

from __future__ import annotations

import dataclasses
import typing

from cvfp.strict import ConfigError, StrictConfig, parse_value, read_config_file, require

__all__ = ["ConfigError", "StrictConfig", "parse_value", "read_config_file"]  # the machinery, re-exported

# The largest seed every generator takes (torch's and numpy's, and a seed plus one).
MAX_SEED = 2**63 - 1

# The architectures' names; what each is lives in one table, cvfp.models.registry, which checks at import
# that its rows are exactly these.
Arch = typing.Literal["e", "equal-decrease", "random-context", "zero-context", "e-rnn", "lstm", "transformer", "ngram"]


@dataclasses.dataclass(frozen=True)
class ModelConfig(StrictConfig):
    # Architecture, a row of cvfp.models.registry: the CVFP designs "e" (token
    # input on every ContextLayer, algorithm §1) and "equal-decrease" (token only
    # into layer 0, widths falling linearly), the controls "random-context" (the
    # ContextBlock left at its random init) and "zero-context" (the TokenBlock
    # reads zero contexts), "e-rnn" (the E design's cell trained end to end as an RNN by truncated BPTT,
    # no Phase 1), and the baselines "lstm", "transformer", "ngram".
    arch: Arch = "e"
    # L: number of ContextLayers, equal to the number of TokenLayers; for the
    # LSTM and Transformer baselines, their number of layers.
    num_layers: int = 6
    # Separate depths of the ContextBlock and the TokenBlock (null: num_layers).
    context_layers: int | None = None
    token_layers: int | None = None
    # Which contexts the TokenLayers read: "e" (the original: TokenLayer l reads
    # ContextLayer l's output c_l; with unequal depths TokenLayer l of T reads
    # ContextLayer ceil((l + 1) L / T), so the last reads c_L), "final" (every
    # TokenLayer reads the final context c_L), "split" (the first TokenLayer
    # reads the previous token's final context c_{i-1}, the last reads c_i,
    # the others none; a single TokenLayer reads both).
    context_mode: typing.Literal["e", "final", "split"] = "e"
    # C: width of the context vector.
    context_dim: int = 768
    # E: width of one token embedding; must equal the frozen table's width.
    embed_dim: int = 768
    # k: tokens fed per step (concatenated oldest first, zero-padded at start).
    input_tokens: int = 1
    # V: vocabulary size; must equal the frozen table's row count.
    vocab_size: int = 50257
    # The output head (cvfp.models.heads): "full" (the original's: a trainable,
    # zero-initialised Linear(E -> V) with bias), "tied" (logits = t @ table^T
    # with the frozen embedding table, no bias: nothing to train), or
    # "adaptive" (the adaptive softmax of Grave et al. 2017: an exact, normalised
    # distribution at a fraction of the full head's cost). Every architecture
    # with a head (CVFP designs, LSTM, Transformer) takes it.
    head: typing.Literal["full", "tied", "adaptive"] = "full"
    # Adaptive head: the cluster boundaries in the train stream's frequency
    # order (the head's shortlist is the first cutoff's most frequent tokens;
    # cutoffs at or beyond V - 1 are dropped), and the factor by which each
    # tail cluster's projection width shrinks (E / div^(i+1) for cluster i).
    adaptive_cutoffs: tuple[int, ...] = (4096, 16384)
    adaptive_div_value: float = 4.0
    # Nonlinearity of every ContextLayer and TokenLayer: "relu" (the original's) or "gelu".
    activation: typing.Literal["relu", "gelu"] = "relu"
    # Std of the normal init of every block Linear's weight / bias (algorithm §1).
    init_weight_std: float = 0.1
    init_bias_std: float = 0.01
    # Transformer baseline: context window W in tokens and attention heads. Its
    # width (and the LSTM's hidden size) is derived so that the body has as
    # many trainable parameters as the E design's ContextBlock + TokenBlock.
    transformer_window: int = 256
    transformer_heads: int = 4
    # How the Transformer trains: "overlapping" windows, each target with W/2 .. W-1 tokens of context exactly as
    # scoring gives it (windows of W, stride W/2, the loss on each window's new half: twice the body's compute
    # per target), or "disjoint" windows of W (cvfp before: 0 .. W-1 tokens of context, W/2 on average).
    transformer_train_windows: typing.Literal["overlapping", "disjoint"] = "overlapping"
    # Baselines (LSTM, Transformer): the head reads LayerNorm(x + body output), the current token's input
    # added back as CVFP's TokenLayer does (its t' = LN(t + ...)); false: LayerNorm(body output) only.
    baseline_identity: bool = True
    # LSTM baseline: its layers (null: model.num_layers, as cvfp did before) and the initial bias of its
    # forget gates (null: PyTorch's default uniform init, as before; 1 is the usual choice).
    lstm_layers: int | None = 1
    lstm_forget_bias: float | None = 1.0
    # What a baseline's body is sized to: the E design's ContextBlock + TokenBlock "parameters", or "compute":
    # the E design's body training FLOPs per train target per Phase 2 epoch, 6 P_tok + 2 P_ctx (the contexts
    # recomputed each epoch) + 6 P_ctx x match_phase1_sweeps (Phase 1's sweeps spread over the epochs: 7
    # sweeps over the quick preset's 5-epoch cap is 1.4), against the baseline's own (the Transformer's
    # attention and overlapping windows counted).
    baseline_match: typing.Literal["parameters", "compute"] = "parameters"
    match_phase1_sweeps: float = 1.4
    # n-gram baseline: the orders tried; the one with the lowest validation loss is kept.
    ngram_orders: tuple[int, ...] = (3, 4, 5)

    def __post_init__(self) -> None:
        require(self.num_layers >= 1, f"num_layers must be >= 1, got {self.num_layers}")
        for name in ("context_layers", "token_layers"):
            value = getattr(self, name)
            require(value is None or value >= 1, f"{name} must be >= 1 (or null for num_layers), got {value}")
        require(self.context_dim >= 1, f"context_dim must be >= 1, got {self.context_dim}")
        require(self.embed_dim >= 1, f"embed_dim must be >= 1, got {self.embed_dim}")
        require(self.input_tokens >= 1, f"input_tokens must be >= 1, got {self.input_tokens}")
        require(self.vocab_size >= 2, f"vocab_size must be >= 2, got {self.vocab_size}")
        require(self.init_weight_std >= 0, "init_weight_std must be >= 0")
        require(self.init_bias_std >= 0, "init_bias_std must be >= 0")
        require(self.transformer_window >= 2, "transformer_window must be >= 2")
        require(self.transformer_heads >= 1, "transformer_heads must be >= 1")
        require(self.lstm_layers is None or self.lstm_layers >= 1, "lstm_layers must be >= 1 or null")
        require(self.match_phase1_sweeps >= 0, f"match_phase1_sweeps must be >= 0, got {self.match_phase1_sweeps}")
        require(bool(self.ngram_orders) and min(self.ngram_orders) >= 1, "ngram_orders must be orders >= 1")

    @property
    def context_depth(self) -> int:
        """ContextLayers of a CVFP design."""
        return self.num_layers if self.context_layers is None else self.context_layers

    @property
    def token_depth(self) -> int:
        """TokenLayers of a CVFP design."""
        return self.num_layers if self.token_layers is None else self.token_layers


# Phase 1's diversity terms (cvfp.training.diversity.DIVERSITY has one function per name).
Diversity = typing.Literal["seed", "oacd", "vicreg", "nuclear", "log-rank"]


# ModelConfig fields that only the end-to-end baselines (the "sequence" family) read.
BASELINE_FIELDS = (
    "baseline_identity",
    "lstm_layers",
    "lstm_forget_bias",
    "transformer_train_windows",
    "baseline_match",
    "match_phase1_sweeps",
)


@dataclasses.dataclass(frozen=True)
class Phase1Config(StrictConfig):
    # Total iterations including the random iteration 0 (algorithm §2, "max 40").
    max_iterations: int = 40
    # No early stop before this many iterations, counting the random iteration 0:
    # the run may stop after iteration i once i + 1 >= min_iterations (algorithm §2, "min 5").
    min_iterations: int = 5
    # Stop once this share of tokens has converged.
    stop_rate: float = 0.99
    # A token has converged when mean((out - prev)^2) over C is below this.
    convergence_threshold: float = 0.03
    # Std of the Gaussian noise added to the input context (phase1_context_noise).
    context_noise: float = 0.1
    # w in (1-w)*MSE + w*D (dist_reg_weight); 1.0 is the diversity-only objective.
    dist_reg_weight: float = 0.8
    # D, the diversity term (cvfp.training.diversity, each with its formula):
    # "seed" (-||X - mean(X)||_F / B), "oacd", "vicreg", "nuclear", "log-rank".
    diversity: Diversity = "seed"
    # When Phase 1 stops, always after iteration i with i + 1 >= min_iterations:
    # "rate" (the original's: the convergence rate has reached stop_rate),
    # "improvement" (the rate rose by less than min_improvement since the
    # iteration before), or "fixed" (never early: exactly max_iterations).
    stop_rule: typing.Literal["rate", "improvement", "fixed"] = "rate"
    min_improvement: float = 0.01
    # Tokens per mini-batch; gradients of all mini-batches are accumulated.
    batch_tokens: int = 8000
    learning_rate: float = 0.002
    # Max global gradient norm before the single Adam step per iteration.
    grad_clip: float = 1.0
    # Std of iteration 0's random contexts.
    init_context_std: float = 0.01
    # How the noise and iteration 0's random contexts are drawn: "stream" (the
    # original's: one generator, batch after batch) or "counter" (each batch of each
    # iteration from its own generator, seeded by the run seed, the iteration
    # and the batch). A sharded Phase 1 needs "counter": with one stream a rank
    # cannot draw its shard's noise without drawing everything before it.
    noise: typing.Literal["stream", "counter"] = "stream"
    # False: run the same Jacobi iterations but never update the ContextBlock,
    # which stays at its random init (the frozen-random ablation, algorithm §9.3).
    update_context_block: bool = True
    # Save Phase 1's state (weights, Adam, contexts, noise generator) every this
    # many iterations and when it ends, so that a killed run resumes inside
    # Phase 1 (cvfp.training.resume); 0 never saves (a killed run restarts it).
    save_every: int = 5
    # What the ContextBlock is trained for: "seed", the original's fixed point + diversity; or "lm" (beyond the
    # original): after the original's Phase 1 (lm_warm_start; false: zero contexts), lm_epochs epochs train the whole
    # model on the next-token loss, each batch's contexts from lm_sweeps Jacobi sweeps warm-started at the stored
    # ones, the gradient through the last lm_grad_sweeps (1: the one-step / phantom gradient), the stored contexts
    # refreshed by the sweeps (and by the exact recurrence every lm_refresh_every epochs; 0: never); Phase 2
    # then retrains TokenBlock and head (training.end_to_end). lm_learning_rate null: Phase 2's (lm_rate).
    objective: typing.Literal["seed", "lm"] = "seed"
    lm_warm_start: bool = True
    lm_epochs: int = 2
    lm_sweeps: int = 2
    lm_grad_sweeps: int = 1
    lm_learning_rate: float | None = None
    lm_refresh_every: int = 0

    def __post_init__(self) -> None:
        require(self.max_iterations >= 1, "max_iterations must be >= 1")
        require(self.save_every >= 0 and self.lm_refresh_every >= 0, "save_every and lm_refresh_every must be >= 0")
        require(self.lm_epochs >= 1 and self.lm_sweeps >= 1, "lm_epochs and lm_sweeps must be >= 1")
        require(1 <= self.lm_grad_sweeps <= self.lm_sweeps, "lm_grad_sweeps must be in [1, lm_sweeps]")
        require(self.lm_learning_rate is None or self.lm_learning_rate > 0, "lm_learning_rate must be > 0 or null")
        require(self.min_iterations >= 0, "min_iterations must be >= 0")
        require(0.0 <= self.stop_rate <= 1.0, f"stop_rate must be in [0, 1], got {self.stop_rate}")
        require(self.convergence_threshold > 0, "convergence_threshold must be > 0")
        require(self.context_noise >= 0, "context_noise must be >= 0")
        require(0.0 <= self.dist_reg_weight <= 1.0, f"dist_reg_weight must be in [0, 1], got {self.dist_reg_weight}")
        require(self.batch_tokens >= 1, "batch_tokens must be >= 1")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require(self.grad_clip > 0, "grad_clip must be > 0")
        require(self.init_context_std >= 0, "init_context_std must be >= 0")
        require(self.min_improvement >= 0, "min_improvement must be >= 0")

    def lm_rate(self, phase2_rate: float) -> float:
        """The end-to-end epochs' rate: lm_learning_rate, or when null Phase 2's (one tuned rate trains both)."""
        return phase2_rate if self.lm_learning_rate is None else self.lm_learning_rate


CacheMode = typing.Literal["parallel", "sequential"]


@dataclasses.dataclass(frozen=True)
class Phase2Config(StrictConfig):
    # Maximum number of epochs.
    epochs: int = 10
    # Early stopping: stop after this many epochs in a row without a lower
    # validation loss. 0 disables it (fixed-epochs mode: run all epochs).
    patience: int = 1
    # Load the best epoch's weights at the end (the original did not).
    restore_best: bool = False
    # Tokens per contiguous mini-batch; pinned, never derived from free memory.
    batch_size: int = 512
    learning_rate: float = 0.001
    grad_clip: float = 1.0
    # Learning-rate schedule over the epoch cap's optimizer steps, the same for every model: "constant" (the
    # original's), or "cosine" / "linear" decay to 0; either after a linear warmup over warmup_fraction of
    # the steps (0: none).
    schedule: typing.Literal["constant", "cosine", "linear"] = "constant"
    warmup_fraction: float = 0.0
    # Decoupled weight decay (AdamW) on every trained parameter; 0 is plain Adam (the original's).
    weight_decay: float = 0.0
    # Visit each epoch's training batches in an order drawn from the run seed and the epoch (False: stream
    # order, the original's). A stateful model keeps its carried state meaningful instead: the LSTM's
    # parallel streams start at a random rotation of the train stream each epoch.
    shuffle: bool = False
    # How train contexts are computed: "parallel" from Phase 1's final
    # contexts (the original's) or "sequential", the true recurrence as for validation.
    train_cache: CacheMode = "parallel"
    # Storage dtype of every per-token context of a run: Phase 1's contexts
    # (which become the parallel train cache) and the caches. A 16-bit type
    # halves the run's memory per token; Phase 1 then keeps its contexts
    # rounded to 16 bits between iterations (losses stay float32).
    cache_dtype: typing.Literal["float32", "float16", "bfloat16"] = "float32"
    # True: a cache stores one context per token and recomputes each batch's
    # L layer contexts with a frozen ContextBlock forward (L times less
    # memory). False: every layer's contexts are stored (the reference path;
    # the two agree to float rounding).
    recompute_contexts: bool = True
    # Adam implementation, same update rule: "fused" (one multi-tensor kernel
    # per step, CPU and CUDA; several times faster for a large head,
    # bench/phase2_step.py) or "reference" (torch's plain per-parameter
    # loop). They agree to float rounding (tests/test_phases.py).
    adam: typing.Literal["fused", "reference"] = "fused"
    # Save the training state (weights, Adam, best epoch so far) after every
    # epoch, so that a killed run resumes at its last finished epoch.
    save_state: bool = True

    def __post_init__(self) -> None:
        require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        require(self.patience >= 0, f"patience must be >= 0, got {self.patience}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require(self.grad_clip > 0, "grad_clip must be > 0")
        require(0.0 <= self.warmup_fraction < 1.0, f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")


@dataclasses.dataclass(frozen=True)
class MetricsConfig(StrictConfig):
    # Seed effective rank: uncentred, at most this many random rows.
    er_max_rows: int = 10000
    # Centred effective rank on a fixed number of random rows (comparable
    # across sample sizes); uses all rows when fewer exist (recorded).
    er_centered_rows: int = 4000

    def __post_init__(self) -> None:
        require(self.er_max_rows >= 1, "er_max_rows must be >= 1")
        require(self.er_centered_rows >= 2, "er_centered_rows must be >= 2")


@dataclasses.dataclass(frozen=True)
class EvalConfig(StrictConfig):
    # How validation and test contexts are computed: "sequential", the true
    # recurrence token by token (the original's, the default and the
    # reference), or "jacobi": sweeps of the parallel map over the whole
    # stream until the largest change of any context entry in a sweep is at
    # most jacobi_tolerance (beyond the original; the sweeps and the final
    # residual are recorded; exact after N sweeps whatever the model).
    recurrence: typing.Literal["sequential", "jacobi"] = "sequential"
    jacobi_tolerance: float = 1e-5
    jacobi_max_sweeps: int = 200
    # Score the test set at the end of the run. false: a run that chooses a setting (``cvfp compare --tune``'s
    # tuning runs), which must never see test; its summary's test is null.
    score_test: bool = True

    def __post_init__(self) -> None:
        require(self.jacobi_tolerance > 0, "jacobi_tolerance must be > 0")
        require(self.jacobi_max_sweeps >= 1, "jacobi_max_sweeps must be >= 1")


DataProtocol = typing.Literal["seed", "heldout"]


@dataclasses.dataclass(frozen=True)
class DataConfig(StrictConfig):
    # Corpus name (sharegpt, chitchat, ultrachat) or a path to a .txt file,
    # a folder of .txt files or a .jsonl file with a "messages" list per line.
    corpus: str = "sharegpt"
    # Frozen embedding table: gpt2, whisper-tiny-en, smollm2-135m, random.
    embeddings: str = "smollm2-135m"
    # Data protocol: "seed" (algorithm §6) or "heldout" (fixed val/test conversations).
    protocol: DataProtocol = "seed"
    # The "seed" protocol: share of the stream's tokens used for validation.
    val_fraction: float = 0.1
    # Held-out protocol: each of validation and test holds at least this many
    # conversations and at least this many tokens; a conversation longer than
    # heldout_max_share of its set's token target is left out of the draw (and
    # goes to the end of the train order), so that no chat dominates a set.
    # A token target of 0 takes exactly the conversation count, with no share rule.
    heldout_val_conversations: int = 50
    heldout_test_conversations: int = 50
    heldout_val_tokens: int = 20_000
    heldout_test_tokens: int = 20_000
    heldout_max_share: float = 0.05
    # Held-out protocol: 0 takes test, validation and train conversations in
    # corpus order. P > 0 takes them in a seeded random order of the first P
    # conversations (still nested: N's train set contains every smaller N's),
    # so that a small N is not one topic (consecutive ShareGPT records are
    # often parts of one chat).
    heldout_pool: int = 0
    # Seed of that order; separate from the run seed so that every model seed
    # is scored on the same text.
    shuffle_seed: int = 0
    # Conversations N trained on: one run's size. A sweep sets it for each of
    # its points (RunConfig.point), so a sweep's own config leaves it null.
    samples: int | None = None

    def __post_init__(self) -> None:
        require(bool(self.corpus), "corpus must not be empty")
        require(self.samples is None or self.samples >= 1, "samples must be >= 1")
        require(0.0 < self.val_fraction < 1.0, "val_fraction must be in (0, 1)")
        require(self.heldout_val_conversations >= 1, "heldout_val_conversations must be >= 1")
        require(self.heldout_test_conversations >= 0, "heldout_test_conversations must be >= 0")
        require(self.heldout_pool >= 0, "heldout_pool must be >= 0")
        require(self.heldout_val_tokens >= 0 and self.heldout_test_tokens >= 0, "heldout_*_tokens must be >= 0")
        require(0.0 < self.heldout_max_share <= 1.0, "heldout_max_share must be in (0, 1]")
        require(0 <= self.shuffle_seed <= MAX_SEED, f"shuffle_seed must be in [0, {MAX_SEED}], got {self.shuffle_seed}")


@dataclasses.dataclass(frozen=True)
class RunConfig(StrictConfig):
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    phase1: Phase1Config = dataclasses.field(default_factory=Phase1Config)
    phase2: Phase2Config = dataclasses.field(default_factory=Phase2Config)
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    evaluation: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    # Seed of every random generator of the run.
    seed: int = 42
    # "auto" picks CUDA when available.
    device: typing.Literal["auto", "cpu", "cuda"] = "auto"
    # On CUDA, let float32 matrix products use TensorFloat-32 (about 10 bits of mantissa in the products, float32
    # accumulation): several times faster on Ampere and later. false: full float32. No effect on CPU.
    tf32: bool = True
    # On CUDA, run the sequential recurrence (validation, test, a sequential
    # train cache) as replays of a captured CUDA graph of 64 steps instead of
    # one kernel launch per operation (cvfp.models.recurrence.StepBlock).
    cuda_graphs: bool = True
    # Experiment trackers that also receive every metric record (cvfp.io.trackers):
    # any of "tensorboard", "wandb", "mlflow". Not part of what decides a run's result.
    log_to: tuple[typing.Literal["tensorboard", "wandb", "mlflow"], ...] = ()
    # Under torchrun, train each point of a CVFP design over all the ranks
    # (Phase 1 on contiguous shards of the stream, Phase 2 under
    # DistributedDataParallel with every batch split over the ranks, scoring
    # split and summed) instead of handing whole points to ranks. Needs
    # phase1.noise = "counter". Same results as one process up to float
    # summation order, so not part of what decides a run's result
    # (docs/distributed.md).
    shard_point: bool = False

    def __post_init__(self) -> None:
        require(0 <= self.seed <= MAX_SEED, f"seed must be in [0, {MAX_SEED}], got {self.seed}")
        require(len(set(self.log_to)) == len(self.log_to), f"log_to names a tracker twice: {list(self.log_to)}")

    def point(self, samples: int | None, seed: int | None = None) -> RunConfig:
        """The config of one run: this one on ``samples`` conversations (and ``seed``, when given)."""
        return self.replace(data=self.data.replace(samples=samples), seed=self.seed if seed is None else seed)
