"""Data protocols: which tokens train, validate and test a model of N samples.

``seed`` (algorithm §6): the first N conversations, tokenised one by one and
concatenated with no separator; the last ``val_fraction`` of that stream's
tokens, decoded to text and re-encoded, is validation; the rest is train.
Every N is scored on a different tail, cut mid-conversation.

``heldout``: test, then validation, take conversations in order until each
holds its minimum conversations and tokens (a conversation above
``heldout_max_share`` of a set's token target is left out of it); train is
the N records after them. Every point of a scaling fit is scored on the same
text, and no training size ever sees it. With
``heldout_pool = P`` the same is done on a seeded random order of the first P
records' conversations instead of the corpus order. Conversations, not
records, are the units: records that share a conversation id (ShareGPT's
``abc_0``, ``abc_1``) never straddle a boundary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from cvfp.config import DataConfig
from cvfp.data.corpora import Corpus, CorpusError
from cvfp.data.tokenizers import Tokenizer
from cvfp.files import atomic_write
from cvfp.scoring import Documents

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cvfp"


@dataclasses.dataclass
class DataSplit:
    protocol: str
    train: np.ndarray  # (N_train,) int64 token ids
    val: np.ndarray
    test: np.ndarray | None
    info: dict  # counts for reports
    # Where each conversation of the validation / test stream starts (the original protocol's validation
    # tail is one document: its conversations are not known after the re-encoding).
    val_starts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(1, dtype=np.int64))
    test_starts: np.ndarray | None = None

    def documents(self, which: str, tokenizer: Tokenizer) -> Documents:
        """The conversations of the "val" or "test" stream and the UTF-8 bytes of each predicted token."""
        stream, starts = (self.val, self.val_starts) if which == "val" else (self.test, self.test_starts)
        return Documents(starts, tokenizer.token_byte_lengths()[stream[1:]])


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)

    atomic_write(path, write)


def _read_token_cache(path: Path, count: int, tokenizer: Tokenizer) -> list[np.ndarray] | None:
    """The ``count`` conversations of a token cache file; None (and a warning) when it is damaged,
    so that the corpus is tokenised again and the file rewritten."""
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, offsets = data["ids"], data["offsets"]
        ok = (
            ids.ndim == 1
            and offsets.ndim == 1
            and len(offsets) == count + 1
            and np.issubdtype(ids.dtype, np.integer)
            and np.issubdtype(offsets.dtype, np.integer)
            and offsets[0] == 0
            and offsets[-1] == len(ids)
            and bool(np.all(np.diff(offsets) >= 0))
            and (len(ids) == 0 or (ids.min() >= 0 and ids.max() < tokenizer.vocab_size))
        )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("token cache %s is unreadable (%s): tokenising again", path, err)
        return None
    if not ok:
        log.warning("token cache %s does not hold %d conversations of valid ids: tokenising again", path, count)
        return None
    return [ids[offsets[i] : offsets[i + 1]].astype(np.int64) for i in range(count)]


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
            (int(p.stem.rsplit("-", 1)[1]), p)
            for p in (cache_dir / "tokens").glob(f"{key}-*.npz")
            if p.stem.rsplit("-", 1)[1].isdigit()
        )
        for n, path in cached:
            if n >= count:
                convs = _read_token_cache(path, n, tokenizer)
                if convs is not None:
                    return convs[:count]
    convs = [
        np.asarray(tokenizer.encode(text), dtype=np.int64)
        for text in tqdm(corpus.conversations[:count], desc="tokenize", leave=False, disable=count < 200)
    ]
    if cache_dir is not None:
        offsets = np.cumsum([0] + [len(c) for c in convs])
        _atomic_save_npz(cache_dir / "tokens" / f"{key}-{count}.npz", ids=np.concatenate(convs), offsets=offsets)
    return convs


def seed_split(stream: np.ndarray, tokenizer: Tokenizer, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The original's split of one stream (algorithm §6): the last ``val_fraction`` of
    its tokens is decoded and re-encoded as validation, and train is the stream
    minus as many tokens as that re-encoded tail holds.

    Where the cut falls inside a multi-byte character, decoding yields U+FFFD
    and the re-encoded tail can be longer or shorter than the cut; the
    original then shortens or lengthens train by the difference, so that
    train + validation always count as many tokens as the stream.
    """
    cut = int(len(stream) * val_fraction)
    val = np.asarray(tokenizer.encode(tokenizer.decode(stream[len(stream) - cut :].tolist())), dtype=np.int64)
    return stream[: max(0, len(stream) - len(val))], val


@dataclasses.dataclass(frozen=True)
class Composition:
    """What one held-out set is made of: conversations, tokens, the largest conversation's share of the
    tokens, and the conversations left out of the draw for being longer than the share rule allows."""

    conversations: int
    tokens: int
    largest_share: float
    skipped: int = 0
    skipped_tokens: int = 0

    @classmethod
    def of(cls, sizes: list[int], skipped: list[int]) -> Composition:
        total = sum(sizes)
        return cls(len(sizes), total, max(sizes) / total if total else 0.0, len(skipped), sum(skipped))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def text(self) -> str:
        left_out = (
            f"; {self.skipped} longer conversations ({self.skipped_tokens:,} tokens) left out" if self.skipped else ""
        )
        return (
            f"{self.conversations} conversations, {self.tokens:,} tokens, largest {100 * self.largest_share:.1f}%"
            f"{left_out}"
        )


@dataclasses.dataclass(frozen=True)
class HeldoutDraw:
    """Record indices of the held-out protocol's test, validation and train sets, and each held-out set's
    composition (None when token counts were not given)."""

    test: list[int]
    val: list[int]
    train: list[int]
    test_composition: Composition | None = None
    val_composition: Composition | None = None


def heldout_records(
    conversation_ids: list[str], samples: int, cfg: DataConfig, lengths: list[int] | None = None
) -> HeldoutDraw:
    """Record indices (test, validation, train) of the held-out protocol, given each record's token count.

    Units are conversations, never records: records that share a conversation id stay on one side of
    every boundary. Conversations come in corpus order or, with ``heldout_pool = P``, in a seeded random
    order of the conversations among the first P records. Test draws first, then validation, each taking
    conversations in that order until it holds at least ``heldout_*_conversations`` conversations and
    ``heldout_*_tokens`` tokens; a conversation longer than ``heldout_max_share`` of the set's token target
    is left out of the draw (so that no conversation dominates a set) and goes to the end of the train
    order (as do empty conversations, which would score nothing). Train is the first ``samples`` records of
    the remaining conversations (nested: N's train records contain every smaller N's). A token target of 0 takes exactly the conversation count, with no
    share rule (cvfp's sets before the rule). ``lengths`` (tokens per record) is needed with a token
    target; without it the draw checks conversation counts only (a lower bound of what the corpus needs).
    """
    limit = len(conversation_ids)
    if cfg.heldout_pool > limit:  # say, in one error, everything this corpus needs
        pool_fix = f"heldout_pool is {cfg.heldout_pool} but the corpus has only {limit} conversations"
        try:
            heldout_records(conversation_ids, samples, cfg.replace(heldout_pool=0), lengths)
        except CorpusError as err:
            raise CorpusError(f"{pool_fix}; with --set data.heldout_pool=0 (corpus order): {err}") from None
        raise CorpusError(f"{pool_fix}: use --set data.heldout_pool=0 (corpus order) or a pool of at most {limit}")
    if cfg.heldout_pool:
        limit = cfg.heldout_pool
    units: dict[str, list[int]] = {}
    for i in range(limit):
        units.setdefault(conversation_ids[i], []).append(i)
    convs = list(units.values())
    order = np.random.default_rng(cfg.shuffle_seed).permutation(len(convs)) if cfg.heldout_pool else range(len(convs))
    queue = [convs[i] for i in order]
    size = (lambda conv: sum(lengths[r] for r in conv)) if lengths is not None else (lambda conv: 0)
    sets, left_out, pos = [], [], 0
    for count, target in (
        (cfg.heldout_test_conversations, cfg.heldout_test_tokens),
        (cfg.heldout_val_conversations, cfg.heldout_val_tokens),
    ):
        target = target if lengths is not None else 0
        cap = cfg.heldout_max_share * target if target else float("inf")
        chosen, skipped, tokens = [], [], 0
        while (len(chosen) < count or tokens < target) and pos < len(queue):
            conv, pos = queue[pos], pos + 1
            if size(conv) > cap:
                skipped.append(conv)
                continue
            if lengths is not None and size(conv) == 0:  # an empty chat scores nothing: not counted
                left_out.append(conv)
                continue
            chosen.append(conv)
            tokens += size(conv)
        if len(chosen) < count or tokens < target:
            _too_small(cfg, samples, len(convs), "a held-out set")
        sets.append((chosen, skipped))
        left_out += skipped
    rest = queue[pos:] + left_out
    train = [r for conv in rest for r in conv][:samples]
    if len(train) < samples:
        _too_small(cfg, samples, len(convs), f"{samples} train records ({sum(map(len, rest))} left)")
    (test, test_skipped), (val, val_skipped) = sets

    def composition(chosen, skipped):
        return Composition.of([size(c) for c in chosen], [size(c) for c in skipped]) if lengths is not None else None

    return HeldoutDraw(
        [r for conv in test for r in conv],
        [r for conv in val for r in conv],
        train,
        composition(test, test_skipped),
        composition(val, val_skipped),
    )


def _too_small(cfg: DataConfig, samples: int, conversations: int, what: str) -> None:
    """The held-out draw cannot be made: say what it needed and the exact flags that fit this corpus."""
    where = f"heldout_pool is {cfg.heldout_pool}" if cfg.heldout_pool else "the corpus is too small"
    each = (conversations - samples) // 2  # held-out conversations per set that leave N train conversations
    fix = (
        f"For this corpus, size the sets by conversations: --set data.heldout_val_conversations={min(each, 50)} "
        f"--set data.heldout_test_conversations={min(each, 50)} --set data.heldout_val_tokens=0 "
        "--set data.heldout_test_tokens=0 (or raise data.heldout_pool, or use --protocol seed)"
        if each >= 1
        else f"{conversations} conversations cannot hold {samples} train records and two held-out sets: train on "
        "fewer samples or use --protocol seed"
    )
    raise CorpusError(
        f"the held-out protocol cannot fill {what}: it needs test >= {cfg.heldout_test_conversations} conversations "
        f"and {cfg.heldout_test_tokens:,} tokens, validation >= {cfg.heldout_val_conversations} conversations and "
        f"{cfg.heldout_val_tokens:,} tokens (each conversation at most {cfg.heldout_max_share:.0%} of its set), "
        f"and {samples} train records, but {where} ({conversations} conversations). {fix}"
    )


def check_size(
    corpus: Corpus, samples: int, cfg: DataConfig, tokenizer: Tokenizer | None = None, cache_dir: Path | None = None
) -> None:
    """Refuse a sample count the corpus cannot supply under ``cfg``'s protocol before any training: with a
    tokenizer the held-out draw is made exactly (the pool tokenised, and cached); without one its
    conversation counts are checked."""
    if samples < 1:
        raise CorpusError(f"samples must be >= 1, got {samples}")
    if cfg.protocol == "seed":
        if samples > len(corpus.conversations):
            raise CorpusError(
                f"asked for {samples} conversations but corpus {corpus.name} has only {len(corpus.conversations)}"
            )
    elif tokenizer is None:
        heldout_records(corpus.conversation_ids(), samples, cfg)
    else:
        heldout_records(corpus.conversation_ids(), samples, cfg, _record_lengths(corpus, tokenizer, cfg, cache_dir))


def _record_lengths(corpus: Corpus, tokenizer: Tokenizer, cfg: DataConfig, cache_dir: Path | None) -> list[int]:
    """Tokens of each record the held-out draw may take (the pool, or the whole corpus without one)."""
    count = min(cfg.heldout_pool or len(corpus.conversations), len(corpus.conversations))
    return [len(c) for c in tokenize_conversations(corpus, tokenizer, count, cache_dir)]


def make_split(
    corpus: Corpus, tokenizer: Tokenizer, samples: int, cfg: DataConfig, cache_dir: Path | None
) -> DataSplit:
    if samples < 1:
        raise CorpusError(f"samples must be >= 1, got {samples}")
    if cfg.protocol == "seed":
        convs = tokenize_conversations(corpus, tokenizer, samples, cache_dir)
        train, val = seed_split(np.concatenate(convs), tokenizer, cfg.val_fraction)
        test = None
        info = {"conversations": samples, "characters": sum(len(c) for c in corpus.conversations[:samples])}
    else:
        tokens_sized = cfg.heldout_val_tokens or cfg.heldout_test_tokens
        lengths = _record_lengths(corpus, tokenizer, cfg, cache_dir) if tokens_sized else None
        draw = heldout_records(corpus.conversation_ids(), samples, cfg, lengths)
        count = cfg.heldout_pool or max(draw.test + draw.val + draw.train) + 1
        pool = tokenize_conversations(corpus, tokenizer, count, cache_dir)
        ids = corpus.conversation_ids()
        test = np.concatenate([pool[i] for i in draw.test]) if draw.test else None
        val = np.concatenate([pool[i] for i in draw.val])
        val_starts, test_starts = _starts(pool, draw.val, ids), _starts(pool, draw.test, ids) if draw.test else None
        train = np.concatenate([pool[i] for i in draw.train])
        info = {
            "conversations": samples,
            "characters": sum(len(corpus.conversations[i]) for i in draw.train),
            "val_records": len(draw.val),
            "test_records": len(draw.test),
            "val_composition": _composition(draw.val_composition, pool, draw.val, ids),
            "test_composition": _composition(draw.test_composition, pool, draw.test, ids) if draw.test else None,
        }
    for label, arr in (("train", train), ("validation", val), ("test", test)):
        if arr is not None and len(arr) < 2:
            raise CorpusError(f"the {label} stream of {samples} samples has {len(arr)} tokens; need at least 2")
    info.update(
        train_tokens=len(train),
        val_tokens=len(val),
        test_tokens=None if test is None else len(test),
    )
    if cfg.protocol == "seed":
        return DataSplit(cfg.protocol, train, val, test, info)
    return DataSplit(cfg.protocol, train, val, test, info, val_starts, test_starts)


def _composition(known: Composition | None, pool: list[np.ndarray], records: list[int], ids: list[str]) -> dict:
    """A set's composition as a dict: the draw's, or counted from its records (a set sized by conversations)."""
    if known is None:
        sizes: dict[str, int] = {}
        for r in records:
            sizes[ids[r]] = sizes.get(ids[r], 0) + len(pool[r])
        known = Composition.of(list(sizes.values()), [])
    return known.to_dict()


def _starts(pool: list[np.ndarray], records: list[int], conversation_ids: list[str]) -> np.ndarray:
    """Where each conversation starts in the stream of ``records`` (consecutive records of one conversation
    are one document; a conversation with no tokens is merged into the next)."""
    starts, position, previous = [], 0, None
    for r in records:
        if conversation_ids[r] != previous and (not starts or position > starts[-1]):
            starts.append(position)
        previous = conversation_ids[r]
        position += len(pool[r])
    return np.asarray(starts or [0], dtype=np.int64)
