"""Every input path fuzzed: configs and --set, corpus files, the token cache, checkpoints, results.json.

Each reader either returns what the input says or raises cvfp's one-line error naming the file; any
other exception (a traceback for the user) fails the property. Valid inputs must read back exactly.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvfp.cli import main
from cvfp.config import ConfigError, RunConfig, read_config_file
from cvfp.data.corpora import CorpusError, load_corpus
from cvfp.data.protocols import tokenize_conversations
from cvfp.data.tokenizers import get_tokenizer
from cvfp.errors import CvfpError
from cvfp.experiments.results import RESULTS_FORMAT
from cvfp.io.checkpoint import CheckpointError, load_checkpoint
from cvfp.training.point import RunOptions

# 40 examples per property in the suite; CVFP_FUZZ_EXAMPLES=1000 for a longer hunt.
FUZZ = settings(
    max_examples=int(os.environ.get("CVFP_FUZZ_EXAMPLES", "40")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12))  # fmt: skip
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=10), inner, max_size=4), max_leaves=12)  # fmt: skip
CONFIG_KEYS = [f"{section}.{key}" for section, fields in RunConfig().to_dict().items() if isinstance(fields, dict)
               for key in fields] + ["seed", "device", "model.nope", "nope.x", "model"]  # fmt: skip


def tmp_file(tmp_path_factory, name: str, content: bytes) -> Path:
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(content)
    return path


# ----------------------------------------------------------------- configs
@FUZZ
@given(data=st.dictionaries(st.sampled_from(["model", "phase1", "phase2", "data", "seed", "device", "x"]),
                            json_value, max_size=4))  # fmt: skip
def test_config_from_any_json(data):
    try:
        cfg = RunConfig.from_dict(data)
    except ConfigError:
        return
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # what was accepted round-trips


@FUZZ
@given(key=st.sampled_from(CONFIG_KEYS), value=st.text(max_size=20))
def test_set_with_any_value(key, value):
    try:
        cfg = RunConfig().override([f"{key}={value}"])
    except ConfigError:
        return
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # stored and read back intact


@FUZZ
@given(content=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_config_file_of_any_bytes(tmp_path_factory, content):
    path = tmp_file(tmp_path_factory, "c.json", content)
    try:
        data = read_config_file(path)
    except ConfigError as err:
        assert str(path) in str(err)
        return
    assert isinstance(data, dict)


# ----------------------------------------------------------------- corpus readers
messages = st.lists(st.text(string.ascii_letters + " .,!?é日", min_size=1, max_size=20), min_size=1, max_size=3)


@FUZZ
@given(
    records=st.lists(messages, min_size=1, max_size=5),
    as_dicts=st.booleans(),
    suffix=st.sampled_from([".json", ".jsonl"]),
)
def test_valid_json_corpora_read_back_exactly(tmp_path_factory, records, as_dicts, suffix):
    items = [{"messages": [{"role": "user", "content": m} for m in r]} if as_dicts else {"messages": r}
             for r in records]  # fmt: skip
    text = "\n".join(json.dumps(i) for i in items) if suffix == ".jsonl" else json.dumps(items)
    path = tmp_file(tmp_path_factory, "c" + suffix, text.encode())
    expected = ["\n".join(r) for r in records]
    if not any(t.strip() for t in expected):
        with pytest.raises(CorpusError, match="empty"):
            load_corpus(str(path))
        return
    assert load_corpus(str(path)).conversations == expected


@FUZZ
@given(content=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
       suffix=st.sampled_from([".txt", ".json", ".jsonl", ".md"]))  # fmt: skip
def test_any_bytes_as_a_corpus(tmp_path_factory, content, suffix):
    path = tmp_file(tmp_path_factory, "c" + suffix, content)
    try:
        corpus = load_corpus(str(path))
    except CorpusError as err:
        assert str(path) in str(err) or "empty" in str(err)
        return
    text = content.decode("utf-8")  # accepted only when it is UTF-8
    assert corpus.conversations and all(c.strip() for c in corpus.conversations)
    if suffix in (".txt", ".md"):
        assert all(c in text for c in corpus.conversations)  # documents are pieces of the text, never invented


@FUZZ
@given(files=st.lists(st.binary(max_size=60), min_size=0, max_size=3))
def test_any_folder_as_a_corpus(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("folder")
    for i, content in enumerate(files):
        (folder / f"{i}.txt").write_bytes(content)
    try:
        corpus = load_corpus(str(folder))
    except CorpusError:
        return
    assert len(corpus.conversations) == len(files)


# ----------------------------------------------------------------- the token cache
@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer("gpt2")


@FUZZ
@given(damage=st.one_of(st.binary(max_size=100), st.sampled_from(["offsets", "ids", "vocab", "count"])))
def test_a_damaged_token_cache_is_never_misread(tmp_path_factory, tiny_corpus, tokenizer, damage):
    corpus = load_corpus(str(tiny_corpus))
    cache = tmp_path_factory.mktemp("cache")
    expected = tokenize_conversations(corpus, tokenizer, 6, cache)
    (path,) = (cache / "tokens").glob("*.npz")
    if isinstance(damage, bytes):
        path.write_bytes(damage)
    else:
        ids = np.concatenate(expected)
        offsets = np.cumsum([0] + [len(c) for c in expected])
        if damage == "offsets":
            offsets = offsets[::-1].copy()
        elif damage == "ids":
            ids = ids[:-3]
        elif damage == "vocab":
            ids = ids + tokenizer.vocab_size
        else:
            offsets = offsets[:-1]
        with path.open("wb") as f:
            np.savez(f, ids=ids, offsets=offsets)
    again = tokenize_conversations(corpus, tokenizer, 6, cache)
    assert [a.tolist() for a in again] == [e.tolist() for e in expected]


# ----------------------------------------------------------------- checkpoints and results
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_corpus):
    from conftest import tiny_config

    from cvfp.training.point import train_point

    out = tmp_path_factory.mktemp("ckpt") / "run"
    train_point(tiny_config(tiny_corpus), 4, out, options=RunOptions(cache_dir=out.parent / "cache", progress=False))
    return out / "checkpoint"


@FUZZ
@given(meta=st.one_of(json_value, st.binary(max_size=50)), weights=st.one_of(st.none(), st.binary(max_size=80)))
def test_any_checkpoint_files(tmp_path_factory, checkpoint, meta, weights):
    folder = tmp_path_factory.mktemp("ck")
    real = json.loads((checkpoint / "checkpoint.json").read_text())
    if isinstance(meta, bytes):
        (folder / "checkpoint.json").write_bytes(meta)
    else:  # a real description with one field replaced by anything
        key = sorted(real)[len(json.dumps(meta)) % len(real)]
        (folder / "checkpoint.json").write_text(json.dumps({**real, key: meta}))
    (folder / "model.safetensors").write_bytes(
        weights if weights is not None else (checkpoint / "model.safetensors").read_bytes()
    )
    try:
        load_checkpoint(folder)
    except CheckpointError as err:
        assert str(folder) in str(err) or "embedding" in str(err)


@FUZZ
@given(results=json_value, version=st.sampled_from([3, RESULTS_FORMAT]))
def test_any_results_json_is_reported_or_refused_in_one_line(tmp_path_factory, results, version):
    folder = tmp_path_factory.mktemp("results")
    (folder / "results.json").write_text(json.dumps(results if not isinstance(results, dict)
                                                    else {"format": version, **results}))  # fmt: skip
    assert main(["report", str(folder)]) in (0, 2)


def test_no_user_file_is_ever_unpickled():
    src = Path(__file__).resolve().parents[1] / "src"
    for path in src.rglob("*.py"):
        text = path.read_text()
        for unpickling in ("torch.load(", "import pickle", "pickle.load", "allow_pickle=True", "weights_only=False"):
            assert unpickling not in text, (path, unpickling)
    assert issubclass(CheckpointError, CvfpError) and issubclass(CorpusError, CvfpError)
