"""Model architectures: the CVFP designs and the baselines they are compared with (``registry``: the table)."""

from cvfp.models.model import CVFPModel, Design
from cvfp.models.registry import ARCHS, ArchSpec, build_model, e_design_body_parameters, names, spec
from cvfp.models.sequence import SequenceLM

__all__ = [
    "ARCHS",
    "ArchSpec",
    "CVFPModel",
    "Design",
    "SequenceLM",
    "build_model",
    "e_design_body_parameters",
    "names",
    "spec",
]
