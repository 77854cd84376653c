import json
import os
import re

import pytest
import torch

from cvfp.cli import main
from cvfp.inference import CVFPLM, filter_logits
from cvfp.io.checkpoint import CheckpointError, load_checkpoint
from cvfp.training.point import RunOptions, train_point


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_corpus):
    from conftest import tiny_config

    out = tmp_path_factory.mktemp("ckpt") / "run"
    cache = out.parent / "cache"
    cfg = tiny_config(tiny_corpus).override(["phase2.patience=0"])
    summary = train_point(cfg, 12, out, options=RunOptions(cache_dir=cache, progress=False))
    return out, summary, cache


def test_round_trip_gives_identical_logits(trained):
    out, _, _ = trained
    model, meta, _ = load_checkpoint(out / "checkpoint")
    again, _, _ = load_checkpoint(out / "checkpoint" / "model.safetensors")
    ids = torch.tensor([1, 2, 3, 4, 5])
    x = model.step_inputs(ids)
    c = torch.zeros(5, model.cfg.context_dim)
    assert torch.equal(model.step(c, x)[1], again.step(c, x)[1])
    assert meta["tokenizer"] == "gpt2" and meta["embeddings"] == "random-16"
    assert meta["environment"]["packages"]["torch"].startswith("2.")
    assert meta["run_config"]["phase2"]["patience"] == 0 and "val_ppl" in meta["metrics"]
    # The frozen table is not stored in the checkpoint.
    from safetensors.torch import load_file

    assert "embedding" not in load_file(str(out / "checkpoint" / "model.safetensors"))


def test_checkpoint_holds_best_epoch_and_eval_reproduces_val_ppl(trained, capsys):
    out, summary, cache = trained
    lm = CVFPLM.from_checkpoint(out / "checkpoint")
    from cvfp.config import RunConfig
    from cvfp.data.corpora import load_corpus
    from cvfp.data.protocols import make_split

    cfg = RunConfig.from_dict(lm.meta["run_config"])
    split = make_split(load_corpus(cfg.data.corpus), lm.tokenizer, 12, cfg.data, cache)
    result = lm.evaluate([split.val])
    assert result["ppl"] == pytest.approx(summary["val_ppl"], rel=1e-5)
    assert result["bpb"] == pytest.approx(summary["val_bpb"], rel=1e-5)
    args = ["eval", "--checkpoint", str(out / "checkpoint"), "--corpus", cfg.data.corpus, "--samples", "12",
            "--cache-dir", str(cache)]  # fmt: skip
    assert main(args) == 0
    printed = re.search(r"PPL ([0-9.]+)", capsys.readouterr().out)
    assert printed and float(printed.group(1)) == pytest.approx(summary["val_ppl"], rel=1e-5)


def test_eval_text_file_with_document_resets(trained, tmp_path, capsys):
    out, _, _ = trained
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on a mat\n\nhow are you today fine thanks", encoding="utf-8")
    lm = CVFPLM.from_checkpoint(out / "checkpoint")
    docs = [lm.tokenizer.encode(d) for d in text.read_text().split("\n\n")]
    joined, reset = lm.evaluate(docs), lm.evaluate(docs, reset_each=True)
    assert joined["tokens"] == reset["tokens"] + 1
    assert main(["eval", "--checkpoint", str(out / "checkpoint"), "--text", str(text), "--reset-at-documents"]) == 0
    assert f"tokens {reset['tokens']}" in capsys.readouterr().out


def test_eval_jacobi_mode_reports_its_sweeps_and_matches_the_recurrence(trained, tmp_path, capsys):
    out, _, _ = trained
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on a mat and we said hello how are you today", encoding="utf-8")
    ckpt = str(out / "checkpoint")
    assert main(["eval", "--checkpoint", ckpt, "--text", str(text)]) == 0
    exact = capsys.readouterr().out
    # A stream of n tokens is exact after n - 1 sweeps whatever the model, so 200 sweeps reach the recurrence.
    assert main(["eval", "--checkpoint", ckpt, "--text", str(text), "--jacobi-tolerance", "1e-7"]) == 0
    swept = capsys.readouterr().out
    assert exact.split("bits/byte")[0] == swept.split("bits/byte")[0]  # same tokens, loss, PPL and accuracy
    assert "Jacobi:" in swept and "converged" in swept and "NOT" not in swept
    assert main(["eval", "--checkpoint", ckpt, "--text", str(text), "--jacobi-tolerance", "1e-12",
                 "--jacobi-max-sweeps", "1"]) == 0  # fmt: skip
    assert "NOT converged" in capsys.readouterr().out


def _copy_checkpoint(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupted_and_mismatched_checkpoints_are_explained(trained, tmp_path):
    src = trained[0] / "checkpoint"
    bad = _copy_checkpoint(src, tmp_path / "bad")
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(bad)
    wrong_hash = _copy_checkpoint(src, tmp_path / "hash")
    meta = json.loads((wrong_hash / "checkpoint.json").read_text())
    meta["embedding_seed"] = meta["embedding_seed"] + 1
    (wrong_hash / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="different table"):
        load_checkpoint(wrong_hash)
    shapes = _copy_checkpoint(src, tmp_path / "shapes")
    meta = json.loads((shapes / "checkpoint.json").read_text())
    meta["model"]["context_dim"] = 17
    (shapes / "checkpoint.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"context_layers.0.fc.weight: checkpoint \(16, 32\) vs model \(17, 33\)"):
        load_checkpoint(shapes)
    with pytest.raises(CheckpointError, match="not a cvfp checkpoint"):
        load_checkpoint(tmp_path)
    assert main(["generate", "--checkpoint", str(bad)]) == 2


def test_generation_is_reproducible_and_greedy_is_argmax(trained):
    lm = CVFPLM.from_checkpoint(trained[0] / "checkpoint")
    prompt = lm.tokenizer.encode("the cat")
    a = torch.stack(list(lm.generate_ids(prompt, 12, temperature=1.0, top_k=50, seed=7, batch=3)), 1)
    b = torch.stack(list(lm.generate_ids(prompt, 12, temperature=1.0, top_k=50, seed=7, batch=3)), 1)
    assert torch.equal(a, b) and a.shape == (3, 12)
    greedy = [int(t[0]) for t in lm.generate_ids(prompt, 8, temperature=0.0)]
    state = lm.new_state()
    for tok in prompt:
        logits = lm.step(state, torch.tensor([tok]))
    expected = []
    for _ in range(8):
        nxt = int(logits.argmax())
        expected.append(nxt)
        logits = lm.step(state, torch.tensor([nxt]))
    assert greedy == expected
    assert "".join(lm.generate("the cat", 5, temperature=0.0)) == lm.tokenizer.decode(greedy[:5])


def test_filter_logits():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(filter_logits(logits, 2, None)).tolist() == [[True, False, False, True]]
    # softmax mass: 0.64, 0.24, 0.09, 0.03 -> top_p 0.7 keeps the two largest
    assert torch.isinf(filter_logits(logits, None, 0.7)).tolist() == [[True, False, False, True]]


def _rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_stays_flat_over_10000_generated_tokens(trained):
    lm = CVFPLM.from_checkpoint(trained[0] / "checkpoint")
    state_sizes, rss = [], []
    state = lm.new_state()
    for i, _ in enumerate(lm.generate_ids([1, 2], 10_000, temperature=0.0, state=state)):
        if i in (1_000, 9_999):
            state_sizes.append((state.context.numel(), state.recent.numel()))
            rss.append(_rss_bytes())
    assert state_sizes[0] == state_sizes[1]
    assert rss[1] - rss[0] < 20 * 2**20  # no growth with length beyond allocator noise


def test_generate_command_streams_text(trained, capsys):
    args = ["generate", "--checkpoint", str(trained[0] / "checkpoint"), "--prompt", "the", "--max-new-tokens", "5",
            "--seed", "1"]  # fmt: skip
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("the") and main(args) == 0 and capsys.readouterr().out == first
    assert main(args + ["--batch", "2"]) == 0 and capsys.readouterr().out.count("--- sample") == 2
