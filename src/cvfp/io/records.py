"""The typed record of one finished run: what ``results.json`` holds per point and the reports read.

``summary.json`` (written by ``cvfp.training.runner``) is a superset: the record is its part that the
sweep's results, fits and reports use. The runner checks its summary against the record before writing it,
and ``cvfp.experiments.results`` reads every summary through it, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import typing

from cvfp.errors import CvfpError


class RecordError(CvfpError, ValueError):
    """A run summary lacks a field of the point record."""


@dataclasses.dataclass(frozen=True)
class PointRecord:
    samples: int  # training conversations N
    seed: int
    arch: str
    trainable_parameters: int
    train_flops: int  # analytic (cvfp.training.flops)
    details: dict  # architecture-specific facts (parameter split, widths, n-gram order)
    train_tokens: int
    val_tokens: int
    test_tokens: int | None
    val_loss: float  # the reported (best) epoch's
    val_ppl: float
    val_acc: float
    val_bpb: float | None
    val_er: float | None  # CVFP designs only, as the other Phase 1 / context figures below
    val_er_centered: float | None
    val_er_centered_rows: int | None
    train_er: float | None
    train_er_centered: float | None
    phase1_iterations: int | None
    phase1_converged: bool | None
    phase1_final_rate: float | None
    best_epoch: int
    stopped_epoch: int
    seconds: float
    epochs: list  # one record per Phase 2 epoch
    context_gap: dict | None
    test: dict | None  # test metrics, when the protocol has a test set
    # Added after results format 3 was fixed; older summaries lack them (read as None).
    memory: dict | None = None
    jacobi: dict | None = None
    val_documents: dict | None = None  # per-conversation sums of the reported epoch (cvfp.scoring.Scores)
    val_composition: dict | None = None  # held-out sets: cvfp.data.protocols.Composition
    test_composition: dict | None = None

    @classmethod
    def from_summary(cls, summary: dict) -> PointRecord:
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in summary]
        if missing:
            raise RecordError(f"a run summary lacks {', '.join(missing)}")
        return cls(**{f.name: summary.get(f.name, f.default) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict[str, typing.Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
