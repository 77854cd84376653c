"""cvfp: context-vector fixed-point (CVFP) language models and their scaling experiments.

The public API (imported lazily, so ``import cvfp`` stays cheap)::

    from cvfp import RunConfig, quick_preset, seed_preset        # configuration (cvfp.config, cvfp.presets)
    from cvfp import train_point, run_scaling, run_grid, run_compare  # one run, a sweep, a grid, a comparison
    from cvfp import RunOptions                                  # how points run: cache folder, progress, preset
    from cvfp import CVFPLM, load_lm, load_pretrained            # a trained model: evaluate, generate, Hub
    from cvfp import build_model, spec, CVFPModel                # the models and the table of architectures
    from cvfp import CvfpError                                   # the base of every error a user can fix

Everything else is reachable through its module; docs/algorithm.md describes what the code computes.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "cvfp.config",
    "ModelConfig": "cvfp.config",
    "Phase1Config": "cvfp.config",
    "Phase2Config": "cvfp.config",
    "DataConfig": "cvfp.config",
    "quick_preset": "cvfp.presets",
    "seed_preset": "cvfp.presets",
    "train_point": "cvfp.training.point",
    "RunOptions": "cvfp.training.point",
    "run_scaling": "cvfp.experiments.sweep",
    "run_grid": "cvfp.experiments.grid",
    "run_compare": "cvfp.experiments.compare",
    "CVFPLM": "cvfp.inference",
    "BaselineLM": "cvfp.inference",
    "load_lm": "cvfp.inference",
    "load_pretrained": "cvfp.inference",
    "build_model": "cvfp.models",
    "CVFPModel": "cvfp.models",
    "spec": "cvfp.models",
    "CvfpError": "cvfp.errors",
}
__all__ = ["__version__", *_EXPORTS.keys()]  # noqa: PLE0604 (the keys are strings)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'cvfp' has no attribute {name!r}")
