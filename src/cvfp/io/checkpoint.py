"""Checkpoints: safetensors weights plus a JSON description; nothing is pickled.

``model.safetensors`` holds the trained blocks and head (never the frozen
embedding table, which is reloaded by name and verified by its sha256);
``checkpoint.json`` holds the model config, embedding and tokenizer names, the
table's hash, the run config, metrics and package versions. An n-gram model's
checkpoint holds the token stream it was counted on (``train_tokens``) and its
order (``ngram_order``): it is recounted on loading, the same model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cvfp.config import ConfigError, ModelConfig
from cvfp.data.embeddings import EmbeddingTable, load_embeddings
from cvfp.errors import CvfpError
from cvfp.files import loads_json
from cvfp.io.rundir import write_json_atomic
from cvfp.io.tensors import DamagedTensors, load_tensors, save_tensors
from cvfp.models import CVFPModel, SequenceLM, build_model, spec
from cvfp.models.ngram import KneserNey
from cvfp.strict import upgrade_model_dict

Model = CVFPModel | SequenceLM | KneserNey

WEIGHTS = "model.safetensors"
META = "checkpoint.json"


class CheckpointError(CvfpError, RuntimeError):
    """A checkpoint is missing, corrupted or does not match its description."""


def save_checkpoint(path: Path, model: Model, table: EmbeddingTable, embedding_seed: int, meta: dict) -> None:
    """Save ``model`` (its current weights) to the folder ``path``."""
    description = {
        "format": FORMAT,
        "embeddings": table.name,
        "embedding_seed": embedding_seed,
        "embedding_sha256": table.sha256,
        "tokenizer": table.tokenizer,
        **meta,
    }
    write_checkpoint(path, model, description)


def write_checkpoint(path: Path, model: Model, description: dict) -> None:
    """``model``'s trained weights (never the frozen table) and its ``checkpoint.json`` description."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if isinstance(model, KneserNey):
        weights = {NGRAM_TOKENS: torch.from_numpy(model.stream)}
        description = {**description, "ngram_order": model.order}
    else:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for stale in path.glob(WEIGHTS + ".tmp"):  # left by a kill in cvfp <= 0.1.0's save
        stale.unlink()
    save_tensors(path / WEIGHTS, weights)
    write_json_atomic(path / META, {"format": FORMAT, **description, "model": model.cfg.to_dict()})


def _folder(path: Path) -> Path:
    """A checkpoint folder, given the folder or a file inside it."""
    path = Path(path)
    return path.parent if path.is_file() else path


FORMAT = "cvfp-checkpoint-1"
# The n-gram model's one tensor: the stream it is counted on.
NGRAM_TOKENS = "train_tokens"
# What load_checkpoint needs from checkpoint.json, with the JSON type of each.
REQUIRED = {"model": dict, "embeddings": str, "embedding_seed": int, "embedding_sha256": str, "tokenizer": str}


def read_meta(path: Path) -> dict:
    """checkpoint.json of a checkpoint folder, checked for its format and the fields loading needs."""
    meta_path = _folder(path) / META
    try:
        meta = loads_json(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{meta_path} does not exist: not a cvfp checkpoint folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_path} is corrupted: {err}") from None
    found = meta.get("format") if isinstance(meta, dict) else None
    if found != FORMAT:
        raise CheckpointError(
            f"{meta_path} has format {found!r}; this cvfp reads {FORMAT!r} (another program's "
            "or another version's checkpoint)"
        )
    problems = [f"{key} missing" for key in REQUIRED if key not in meta]
    problems += [
        f"{key} is not a {kind.__name__}"
        for key, kind in REQUIRED.items()
        if key in meta and not isinstance(meta[key], kind)
    ]
    if problems:
        raise CheckpointError(f"{meta_path} is incomplete: {', '.join(problems)}")
    return meta


def load_checkpoint(
    path: Path, device: torch.device | str = "cpu", table: EmbeddingTable | None = None
) -> tuple[Model, dict, EmbeddingTable]:
    """Rebuild the model of a checkpoint folder; verify table hash and shapes."""
    path = _folder(path)
    meta = read_meta(path)
    try:
        cfg = ModelConfig.from_dict(upgrade_model_dict(meta["model"]))
    except (KeyError, ConfigError) as err:
        raise CheckpointError(f"{path / META}: invalid model config ({err})") from None
    if table is None:
        try:
            table = load_embeddings(meta["embeddings"], seed=meta["embedding_seed"])
        except ConfigError as err:
            raise CheckpointError(f"{path / META}: {err}") from None
    if table.sha256 != meta["embedding_sha256"]:
        raise CheckpointError(
            f"embedding table {meta['embeddings']!r} has sha256 {table.sha256[:16]}..., but the "
            f"checkpoint was trained with {meta['embedding_sha256'][:16]}...: a different table"
        )
    try:
        weights, _ = load_tensors(path / WEIGHTS)
    except FileNotFoundError:
        raise CheckpointError(f"{path / WEIGHTS} does not exist") from None
    except DamagedTensors as err:
        raise CheckpointError(str(err)) from None
    if spec(cfg.arch).family == "count":
        return _ngram(path, cfg, weights, meta), meta, table
    model = build_model(cfg, table.table, seed=0)  # every weight is then loaded from the file
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in weights.items()}
    problems = [f"missing {k} {s}" for k, s in expected.items() if k not in found]
    problems += [f"unexpected {k} {s}" for k, s in found.items() if k not in expected]
    problems += [
        f"{k}: checkpoint {found[k]} vs model {s}" for k, s in expected.items() if k in found and found[k] != s
    ]
    if problems:
        raise CheckpointError(f"{path / WEIGHTS} does not match its config: " + "; ".join(problems))
    model.load_state_dict(weights)
    return model.to(device).eval(), meta, table


def _ngram(path: Path, cfg: ModelConfig, weights: dict[str, torch.Tensor], meta: dict) -> KneserNey:
    """The n-gram model of a checkpoint: recounted on its stored stream at its stored order."""
    order = meta.get("ngram_order")
    if set(weights) != {NGRAM_TOKENS} or not isinstance(order, int):
        raise CheckpointError(
            f"{path}: an n-gram checkpoint holds {NGRAM_TOKENS!r} and an integer ngram_order; "
            f"found tensors {sorted(weights)} and order {order!r}"
        )
    return KneserNey(weights[NGRAM_TOKENS].numpy(), order, cfg.vocab_size, cfg)
