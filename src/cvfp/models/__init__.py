"""Model architectures: the CVFP designs and the baselines they are compared with."""

from cvfp.models.model import ARCHITECTURES, CVFPModel
from cvfp.models.registry import SEQUENCE_ARCHS, build_model, e_design_body_parameters
from cvfp.models.sequence import SequenceLM

__all__ = ["ARCHITECTURES", "SEQUENCE_ARCHS", "CVFPModel", "SequenceLM", "build_model", "e_design_body_parameters"]
