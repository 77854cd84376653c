"""Hugging Face Hub: a trained model as a model repository (``save_pretrained`` / ``from_pretrained`` /
``push_to_hub``), through ``huggingface_hub``.

A repository (or a local folder in the same layout) holds the checkpoint as cvfp writes it
(``model.safetensors``: the trained weights, never the frozen table; ``checkpoint.json``: the model config,
the table's name and sha256, the run's config and metrics), a ``config.json`` for the Hub's listing, and a
generated model card (``README.md``). Loading reads the frozen table by name and verifies its hash, as
``cvfp eval`` does; nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

from cvfp.errors import CvfpError
from cvfp.files import atomic_write_text
from cvfp.io.checkpoint import META, WEIGHTS, CheckpointError, load_checkpoint, write_checkpoint
from cvfp.io.rundir import write_json_atomic
from cvfp.models import spec

FILES = (WEIGHTS, META, "config.json", "README.md")


class HubError(CvfpError):
    """The Hub could not be reached, or holds no such model."""


def save_pretrained(model, meta: dict, folder: Path) -> Path:
    """Write ``model`` (a CVFP model or a baseline) with its checkpoint description ``meta`` to ``folder``."""
    folder = Path(folder)
    write_checkpoint(folder, model, meta)
    counts = model.parameter_counts()
    write_json_atomic(
        folder / "config.json",
        {
            "model_type": "cvfp",
            "library_name": "cvfp",
            **model.cfg.to_dict(),
            "embeddings": meta["embeddings"],
            "tokenizer": meta["tokenizer"],
            "parameters": counts,
        },
    )
    atomic_write_text(folder / "README.md", model_card({**meta, "model": model.cfg.to_dict()}, counts))
    return folder


def local_folder(name_or_path: str | Path, revision: str | None = None, token: str | None = None) -> Path:
    """A local folder holding the model: ``name_or_path`` itself, or a download of the Hub repository of that id."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).count("/") != 1:
        raise HubError(f"{name_or_path} is neither a model folder nor a Hub repository id (org/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, token=token, allow_patterns=list(FILES)))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        raise HubError(f"could not fetch {name_or_path} from the Hugging Face Hub: {err}") from None


def from_pretrained(
    name_or_path: str | Path, device: str = "cpu", revision: str | None = None, token: str | None = None
):
    """(model, meta, table) of a local folder or a Hub repository id."""
    folder = local_folder(name_or_path, revision, token)
    if not (folder / META).exists():
        raise CheckpointError(f"{folder} holds no {META}: not a cvfp model")
    return load_checkpoint(folder, device)


def push_to_hub(folder: Path, repo_id: str, private: bool | None = None, token: str | None = None) -> str:
    """Upload a folder written by ``save_pretrained`` to the Hub repository ``repo_id`` (created if needed)."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    missing = [f for f in FILES if not (folder / f).exists()]
    if missing:
        raise HubError(f"{folder} is not a saved model (missing {', '.join(missing)}): run save_pretrained first")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        return api.upload_folder(folder_path=str(folder), repo_id=repo_id, allow_patterns=list(FILES)).commit_url
    except (OSError, ValueError) as err:  # requests' connection errors and the Hub's HTTP errors are OSErrors
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HubError(
            f"could not upload {folder} to the Hugging Face Hub repository {repo_id}: {reason} (the folder is "
            "complete; push it again when the Hub is reachable and you are logged in: `hf auth login`)"
        ) from None


def model_card(meta: dict, counts: dict) -> str:
    """The repository's README: what the model is, what it was trained on, how well it does, how to load it."""
    model, run = meta["model"], meta.get("run_config", {})
    data = run.get("data", {})
    metrics = meta.get("metrics", {})

    def fmt(key: str, digits: int = 2) -> str:
        value = metrics.get(key)
        return "-" if value is None else f"{value:.{digits}f}"

    parameters = "\n".join(f"| {k} | {v:,} |" for k, v in counts.items())
    layers = f"{model['num_layers']} layer{'' if model['num_layers'] == 1 else 's'}"
    test = metrics.get("test_ppl")
    return f"""---
library_name: cvfp
license: other
tags: [cvfp, context-vector-fixed-point, recurrent-language-model]
---

# cvfp model: {model["arch"]}

A {"context-vector fixed-point (CVFP)" if spec(model["arch"]).family == "cvfp" else "baseline"}
language model trained with the `cvfp` Python package (architecture `{model["arch"]}`: {layers},
context width C = {model["context_dim"]}, embedding width E = {model["embed_dim"]}, vocabulary
{model["vocab_size"]:,}, {model["input_tokens"]} token(s) per step; the algorithm: cvfp's docs/algorithm.md).

`config.json` says `model_type: cvfp`, which is not a `transformers` architecture: load this model with cvfp
(below), not with `AutoModel`.

## License

`license: other`: the weights were trained on corpus `{data.get("corpus", "?")}` over the frozen table
`{meta["embeddings"]}`, each under its own license (chitchat-dataset: MIT; ShareGPT's upstream card:
Apache-2.0; SmolLM2-135M: Apache-2.0); cvfp itself is MIT. Set the license that your data allows before
publishing.

| Parameters | Count |
|---|---:|
{parameters}

## Training

- Corpus `{data.get("corpus", "?")}`, protocol `{data.get("protocol", "?")}`, {meta.get("samples", "?")} training
  conversations ({meta.get("train_tokens", "?"):,} tokens), seed {run.get("seed", "?")}.
- Frozen embedding table `{meta["embeddings"]}` (sha256 `{meta["embedding_sha256"][:16]}...`) and its tokenizer
  `{meta["tokenizer"]}`: they are not in this repository; cvfp loads the table by name and checks its hash.
- The full run configuration is `run_config` in `checkpoint.json`.

## Results (validation, best epoch {metrics.get("best_epoch", "-")})

| PPL | Accuracy | Bits per byte |
|---:|---:|---:|
| {fmt("val_ppl")} | {fmt("val_acc", 4)} | {fmt("val_bpb", 4)} |

{"Test PPL (held-out, not used for selection): " + f"{test:.2f}." if test is not None else "No test set."}

## Use

```python
from cvfp.inference import load_pretrained

lm = load_pretrained("{{this repository id or a local folder}}")
print(lm.evaluate([lm.tokenizer.encode("Some text.")]))  # the true recurrence, O(1) state
```

Command line: `cvfp eval --checkpoint FOLDER --text FILE`, `cvfp generate --checkpoint FOLDER --prompt "..."`.
"""
