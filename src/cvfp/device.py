"""The torch device a run asks for (``RunConfig.device``) and its float32 product setting (``RunConfig.tf32``)."""

from __future__ import annotations

import torch

from cvfp.config import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when torch sees one, else the CPU; ``cuda`` without one is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def set_tf32(device: torch.device, enabled: bool) -> None:
    """TensorFloat-32 matrix products on CUDA (``RunConfig.tf32``); CPU arithmetic is left alone."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
