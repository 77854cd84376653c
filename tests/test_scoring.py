"""The scoring module: per-document sums that add up to the totals, against plain per-row references, for every
kind of model, and the conversations of a real held-out split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cvfp.config import ModelConfig
from cvfp.data.corpora import load_corpus
from cvfp.data.embeddings import load_embeddings
from cvfp.data.protocols import make_split
from cvfp.data.tokenizers import get_tokenizer
from cvfp.models import build_model
from cvfp.models.ngram import KneserNey
from cvfp.scoring import Documents, Scorer, add_scores, score_ngram, score_sequence_model

V = 30


def test_per_document_sums_are_the_rows_of_each_document_and_add_up_to_the_totals():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, V, (40,), generator=g)
    logits = torch.randn(39, V, generator=g) * 3
    starts = np.array([0, 7, 8, 25])  # a one-token document (7) has no target of its own beyond row 7
    target_bytes = np.arange(1, 40)
    scorer = Scorer(ids, Documents(starts, target_bytes))
    scorer.add_logits(0, logits[:20].clone())
    scorer.add_logits(20, logits[20:].clone())
    scores = scorer.result()
    nats = F.cross_entropy(logits, ids[1:], reduction="none").double()
    hits = (logits.argmax(-1) == ids[1:]).double()
    doc_of_target = np.searchsorted(starts, np.arange(1, 40), side="right") - 1  # row p predicts position p + 1
    for d in range(len(starts)):
        rows = torch.from_numpy(doc_of_target == d)
        assert scores.nats[d].item() == pytest.approx(nats[rows].sum().item(), rel=1e-6, abs=1e-9)
        assert scores.hits[d].item() == hits[rows].sum().item()
        assert scores.tokens[d].item() == rows.sum().item()
        assert scores.bytes[d].item() == target_bytes[rows.numpy()].sum()
    metrics = scores.metrics()
    assert metrics["tokens"] == 39 and metrics["documents"]["tokens"] == [6, 1, 17, 15]
    assert metrics["loss"] == pytest.approx(nats.mean().item(), rel=1e-6)
    assert metrics["bpb"] == pytest.approx(nats.sum().item() / np.log(2) / target_bytes.sum(), rel=1e-6)


def test_documents_must_start_at_zero_and_increase():
    with pytest.raises(ValueError, match="begin at 0"):
        Documents(np.array([1, 5]))
    with pytest.raises(ValueError, match="begin at 0"):
        Documents(np.array([0, 5, 5]))


def test_every_kind_of_model_scores_per_document_through_the_one_module():
    """An LSTM and a Kneser-Ney model: per-document sums equal the plain per-row scores grouped by document."""
    ids = torch.randint(0, V, (60,), generator=torch.Generator().manual_seed(2))
    starts = np.array([0, 20, 41])
    docs = Documents(starts)
    lstm = build_model(ModelConfig(arch="lstm", num_layers=1, context_dim=8, embed_dim=6, vocab_size=V),
                       torch.randn(V, 6, generator=torch.Generator().manual_seed(1)), seed=0)  # fmt: skip
    torch.nn.init.normal_(lstm.head.weight, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = F.cross_entropy(torch.cat([lg for _, lg in lstm.score_logits(ids)]), ids[1:], reduction="none")
    ngram = KneserNey(ids.numpy()[:40], 3, V, ModelConfig(vocab_size=V))
    ngram_nats, _ = ngram.score_rows(ids.numpy())
    for scores, rows in ((score_sequence_model(lstm, ids, docs), plain.double()),
                         (score_ngram(ngram, ids.numpy(), docs), torch.from_numpy(ngram_nats))):  # fmt: skip
        expected = [rows[0:19].sum(), rows[19:40].sum(), rows[40:].sum()]
        torch.testing.assert_close(scores.nats, torch.stack(expected).double(), rtol=1e-6, atol=1e-9)
        assert scores.tokens.tolist() == [19, 21, 19]


def test_scores_of_several_streams_keep_their_documents_in_order():
    a = Scorer(torch.tensor([1, 2, 3]))
    a.add_rows(0, torch.tensor([1.0, 2.0]), torch.tensor([True, False]))
    b = Scorer(torch.tensor([4, 5, 6, 7]), Documents(np.array([0, 2])))
    b.add_rows(0, torch.tensor([0.5, 0.25, 4.0]), torch.tensor([False, False, True]))
    both = add_scores([a.result(), b.result()])
    assert both.nats.tolist() == [3.0, 0.5, 4.25] and both.tokens.tolist() == [2, 1, 2]
    assert both.hits.tolist() == [1, 0, 1]


def test_the_held_out_sets_are_scored_per_conversation(tiny_cfg, cache_dir):
    """Each held-out conversation of a real split is one document: as many documents as conversations, the
    starts where the conversations' tokens begin, the target bytes those of the stream."""
    data = tiny_cfg.data.replace(protocol="heldout", heldout_val_conversations=5, heldout_test_conversations=3,
                                 heldout_val_tokens=0, heldout_test_tokens=0)  # fmt: skip
    table = load_embeddings(data.embeddings, seed=0)
    tokenizer = get_tokenizer(table.tokenizer)
    corpus = load_corpus(data.corpus)
    split = make_split(corpus, tokenizer, 6, data, cache_dir)
    lengths = [len(tokenizer.encode(corpus.conversations[i])) for i in range(8)]
    assert split.test_starts.tolist() == np.cumsum([0, *lengths[:2]]).tolist()
    assert split.val_starts.tolist() == np.cumsum([0, *lengths[3:7]]).tolist()
    docs = split.documents("val", tokenizer)
    assert len(docs.target_bytes) == len(split.val) - 1
    assert docs.target_bytes.sum() == tokenizer.token_byte_lengths()[split.val[1:]].sum()
