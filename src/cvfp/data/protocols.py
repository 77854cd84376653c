"""Data protocols: which tokens train, validate and test a model of N samples.

``seed`` (SPEC 6): the first N conversations, tokenised one by one and
concatenated with no separator; the last ``val_fraction`` of that stream's
tokens, decoded to text and re-encoded, is validation; the rest is train.
Every N is scored on a different tail, cut mid-conversation.

``heldout``: conversations [0, T) are test and [T, T+V) validation for every
N; train is the N conversations after them. Every point of a scaling fit is
scored on the same text, and no training size ever sees it. With
``heldout_pool = P`` the same is done on a seeded random order of the first P
conversations instead of the corpus order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cvfp.config import DataConfig
from cvfp.data.corpora import Corpus, CorpusError
from cvfp.data.tokenizers import Tokenizer

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cvfp"


@dataclasses.dataclass
class DataSplit:
    protocol: str
    samples: int
    train: np.ndarray  # (N_train,) int64 token ids
    val: np.ndarray
    test: np.ndarray | None
    info: dict  # counts for reports

    def target_bytes(self, stream: np.ndarray, tokenizer: Tokenizer) -> int:
        """UTF-8 bytes of the predicted tokens stream[1:] (for bits per byte)."""
        return int(tokenizer.token_byte_lengths()[stream[1:]].sum())


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def tokenize_conversations(
    corpus: Corpus, tokenizer: Tokenizer, count: int, cache_dir: Path | None
) -> list[np.ndarray]:
    """Token ids of the first ``count`` conversations, cached on disk by
    (corpus fingerprint, tokenizer, count); a cache of a larger count serves too."""
    if count > len(corpus.conversations):
        raise CorpusError(
            f"asked for {count} conversations but corpus {corpus.name} has only {len(corpus.conversations)}"
        )
    key = hashlib.sha256(f"{corpus.fingerprint}|{tokenizer.name}".encode()).hexdigest()[:16]
    if cache_dir is not None:
        cached = sorted(
            (int(p.stem.rsplit("-", 1)[1]), p) for p in (cache_dir / "tokens").glob(f"{key}-*.npz")
        )
        for n, path in cached:
            if n >= count:
                with np.load(path) as data:
                    ids, offsets = data["ids"], data["offsets"]
                return [ids[offsets[i] : offsets[i + 1]] for i in range(count)]
    convs = [
        np.asarray(tokenizer.encode(text), dtype=np.int64)
        for text in tqdm(corpus.conversations[:count], desc="tokenize", leave=False, disable=count < 200)
    ]
    if cache_dir is not None:
        offsets = np.cumsum([0] + [len(c) for c in convs])
        _atomic_save_npz(cache_dir / "tokens" / f"{key}-{count}.npz", ids=np.concatenate(convs), offsets=offsets)
    return convs


def make_split(
    corpus: Corpus, tokenizer: Tokenizer, samples: int, cfg: DataConfig, cache_dir: Path | None
) -> DataSplit:
    if samples < 1:
        raise CorpusError(f"samples must be >= 1, got {samples}")
    if cfg.protocol == "seed":
        convs = tokenize_conversations(corpus, tokenizer, samples, cache_dir)
        stream = np.concatenate(convs)
        val_n = int(len(stream) * cfg.val_fraction)
        train = stream[: len(stream) - val_n]
        val = np.asarray(tokenizer.encode(tokenizer.decode(stream[len(stream) - val_n :].tolist())), dtype=np.int64)
        test = None
        info = {"conversations": samples, "characters": sum(len(c) for c in corpus.conversations[:samples])}
    else:
        t, v = cfg.heldout_test_conversations, cfg.heldout_val_conversations
        need = t + v + samples
        if cfg.heldout_pool:
            if need > cfg.heldout_pool:
                raise CorpusError(
                    f"held-out protocol needs {need} conversations (test {t} + val {v} + train {samples}) "
                    f"but heldout_pool is {cfg.heldout_pool}"
                )
            if cfg.heldout_pool > len(corpus.conversations):
                raise CorpusError(
                    f"heldout_pool is {cfg.heldout_pool} but corpus {corpus.name} has only "
                    f"{len(corpus.conversations)} conversations; lower data.heldout_pool"
                )
            order = np.random.default_rng(cfg.shuffle_seed).permutation(cfg.heldout_pool)[:need]
            pool = tokenize_conversations(corpus, tokenizer, cfg.heldout_pool, cache_dir)
        else:
            order = np.arange(need)
            pool = tokenize_conversations(corpus, tokenizer, need, cache_dir)
        convs = [pool[i] for i in order]
        test = np.concatenate(convs[:t]) if t else None
        val = np.concatenate(convs[t : t + v])
        train = np.concatenate(convs[t + v :])
        texts = [corpus.conversations[i] for i in order[t + v :]]
        info = {
            "conversations": samples,
            "characters": sum(len(c) for c in texts),
            "val_conversations": v,
            "test_conversations": t,
        }
    for label, arr in (("train", train), ("validation", val)):
        if len(arr) < 2:
            raise CorpusError(f"the {label} stream of {samples} samples has {len(arr)} tokens; need at least 2")
    info.update(
        train_tokens=int(len(train)),
        val_tokens=int(len(val)),
        test_tokens=None if test is None else int(len(test)),
    )
    return DataSplit(cfg.protocol, samples, train, val, test, info)
