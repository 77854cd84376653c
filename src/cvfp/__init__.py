"""cvfp: context-vector fixed-point (CVFP) language models and their scaling experiments."""

__version__ = "0.1.0"
