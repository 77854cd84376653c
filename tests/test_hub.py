"""Hugging Face Hub: save_pretrained / from_pretrained round trips (offline, local folders and a stubbed
download), the model card, and the push's calls (the upload itself needs a network: not run here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cvfp.cli import main
from cvfp.inference import CVFPLM, BaselineLM, load_lm, load_pretrained
from cvfp.io import hub
from cvfp.io.checkpoint import CheckpointError
from cvfp.training.point import RunOptions, train_point


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_corpus):
    from conftest import tiny_config

    root = tmp_path_factory.mktemp("hub")
    cfg = tiny_config(tiny_corpus)
    train_point(cfg, 6, root / "e", options=RunOptions(cache_dir=root / "cache", progress=False))
    train_point(
        cfg.override(['model.arch="lstm"']),
        6,
        root / "lstm",
        options=RunOptions(cache_dir=root / "cache", progress=False),
    )
    return root


def logits_of(lm, ids: list[int]) -> torch.Tensor:
    if isinstance(lm, CVFPLM):
        state = lm.new_state()
        return torch.stack([lm.step(state, torch.tensor([t]))[0] for t in ids])
    with torch.no_grad():
        return torch.cat([logits for _, logits in lm.model.score_logits(torch.tensor(ids))])


@pytest.mark.parametrize("arch", ["e", "lstm"])
def test_round_trip_gives_identical_logits(trained, tmp_path, arch):
    lm = load_lm(trained / arch / "checkpoint")
    folder = lm.save_pretrained(tmp_path / "model")
    assert sorted(p.name for p in folder.iterdir()) == sorted(hub.FILES)
    again = (CVFPLM if arch == "e" else BaselineLM).from_pretrained(folder)
    ids = lm.tokenizer.encode("the cat sat on the mat and we said hello")
    assert torch.equal(logits_of(lm, ids), logits_of(again, ids))
    assert again.evaluate([np.array(ids)]) == lm.evaluate([np.array(ids)])
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "cvfp" and config["arch"] == arch
    assert config["parameters"]["trainable"] == lm.model.parameter_counts()["trainable"]


def test_the_model_card_says_what_the_model_is_and_how_to_load_it(trained, tmp_path):
    lm = load_lm(trained / "e" / "checkpoint")
    card = (lm.save_pretrained(tmp_path / "m") / "README.md").read_text()
    meta = lm.meta
    for needle in ("library_name: cvfp", "architecture `e`", f"context width C = {meta['model']['context_dim']}",
                   f"{meta['train_tokens']:,} tokens", "random-16", f"{meta['metrics']['val_ppl']:.2f}",
                   "load_pretrained", "protocol `seed`", "| trainable |"):  # fmt: skip
        assert needle in card, needle


def test_a_hub_id_is_downloaded_through_huggingface_hub(trained, tmp_path, monkeypatch):
    import huggingface_hub

    folder = load_lm(trained / "e" / "checkpoint").save_pretrained(tmp_path / "snapshot")
    calls = []

    def snapshot_download(repo_id, revision=None, token=None, allow_patterns=None):
        calls.append((repo_id, revision, sorted(allow_patterns)))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    lm = load_pretrained("org/tiny-cvfp", revision="v1")
    assert isinstance(lm, CVFPLM) and calls == [("org/tiny-cvfp", "v1", sorted(hub.FILES))]
    with pytest.raises(hub.HubError, match="neither a model folder nor a Hub repository id"):
        load_pretrained(str(tmp_path / "no" / "such" / "thing"))
    with pytest.raises(CheckpointError, match="not a CVFPLM"):
        CVFPLM.from_pretrained(load_lm(trained / "lstm" / "checkpoint").save_pretrained(tmp_path / "l"))


def test_push_uploads_the_saved_folder(trained, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class Api:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create", repo_id, private, exist_ok))

        def upload_folder(self, folder_path, repo_id, allow_patterns):
            calls.append(("upload", sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir()), repo_id))
            return type("Commit", (), {"commit_url": "https://huggingface.co/org/m/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(trained / "e" / "checkpoint"), "--out", str(out),
                 "--push", "org/m", "--private"]) == 0  # fmt: skip
    assert calls == [("token", None), ("create", "org/m", True, True), ("upload", sorted(hub.FILES), "org/m")]
    with pytest.raises(hub.HubError, match="missing"):
        hub.push_to_hub(tmp_path, "org/m")


def test_a_push_without_the_hub_is_one_line(trained, tmp_path, monkeypatch, capsys, caplog):
    """Offline, the Hub client raises a connection error (an OSError): the export is kept, the error is one
    line naming the repository, exit status 2 (as every cvfp error)."""
    import huggingface_hub
    import requests

    class Offline:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            raise requests.exceptions.ConnectionError("Failed to resolve 'huggingface.co'\nmore lines of urllib3")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    out = tmp_path / "export"
    code = main(["export", "--checkpoint", str(trained / "e" / "checkpoint"), "--out", str(out), "--push", "org/m"])
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert code == 2 and len(errors) == 1 and "\n" not in errors[0]
    assert "org/m" in errors[0] and "Failed to resolve 'huggingface.co'" in errors[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(hub.FILES)  # the folder is complete


def test_the_model_card_fields(trained, tmp_path):
    """No placeholder link, "1 layer" not "1 layers", a license field and what model_type means."""
    lm = load_lm(trained / "e" / "checkpoint")
    one_layer = lm.model.cfg.replace(num_layers=1)
    card = hub.model_card({**lm.meta, "model": one_layer.to_dict()}, lm.model.parameter_counts())
    assert "https://github.com/)" not in card
    assert "1 layers" not in card and "`e`: 1 layer," in card
    assert "\nlicense: other\n" in card and "not a `transformers` architecture" in card
