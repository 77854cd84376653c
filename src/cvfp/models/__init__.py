"""Model architectures: the E design and the equal-decrease design."""

from cvfp.models.model import ARCHITECTURES, CVFPModel

__all__ = ["ARCHITECTURES", "CVFPModel"]
