"""lm-evaluation-harness offline: local tasks defined here (a text scored by rolling loglikelihood, a
two-choice task, a generation task) run through lm_eval on a trained model, checked against cvfp's own
evaluation of the same text."""

from __future__ import annotations

import json
import math

import lm_eval
import numpy as np
import pytest
from lm_eval.tasks import TaskManager

import cvfp.harness  # registers the harness model "cvfp"
from cvfp.inference import load_lm
from cvfp.training.point import RunOptions, train_point

DOCS = ["the cat sat on a mat", "we said hello how are you today", "fine thanks and the dog ran to the park"]


@pytest.fixture(scope="module")
def model(tmp_path_factory, tiny_corpus):
    from conftest import tiny_config

    root = tmp_path_factory.mktemp("harness")
    train_point(tiny_config(tiny_corpus), 6, root / "run", options=RunOptions(cache_dir=root / "cache", progress=False))
    return root / "run" / "checkpoint"


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    (folder / "docs.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in DOCS))
    choices = [{"question": "the cat sat on a", "choices": [" mat", " park"], "label": 0},
               {"question": "how are you", "choices": [" today", " mat"], "label": 0}]  # fmt: skip
    (folder / "choice.jsonl").write_text("\n".join(json.dumps(c) for c in choices))
    (folder / "rolling.yaml").write_text(f"""task: cvfp_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "docs.jsonl"}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
  - metric: byte_perplexity
""")
    (folder / "choice.yaml").write_text(f"""task: cvfp_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / "choice.jsonl"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
""")
    return folder


def evaluate(model, tasks, names):
    return lm_eval.simple_evaluate(model="cvfp", model_args=f"pretrained={model}", tasks=names,
                                   task_manager=TaskManager(include_path=str(tasks)), log_samples=True,
                                   bootstrap_iters=0)  # fmt: skip


def test_rolling_loglikelihood_equals_cvfp_evaluation(model, tasks):
    results = evaluate(model, tasks, ["cvfp_rolling"])
    bpb = results["results"]["cvfp_rolling"]["bits_per_byte,none"]
    lm = load_lm(model)
    eot = lm.tokenizer.eot_id
    docs = [np.array([eot, *lm.tokenizer.encode(d)]) for d in DOCS]  # the harness conditions on end-of-text
    ours = lm.evaluate(docs, reset_each=True)  # the engine of `cvfp eval --reset-at-documents`
    tokens = sum(len(d) - 1 for d in docs)
    nats = ours["loss"] * tokens
    assert bpb == pytest.approx(nats / math.log(2) / sum(len(d.encode()) for d in DOCS), rel=1e-5)
    assert ours["bpb"] == pytest.approx(bpb, rel=1e-5)


def test_two_choice_task_and_its_loglikelihoods(model, tasks):
    results = evaluate(model, tasks, ["cvfp_choice"])
    samples = results["samples"]["cvfp_choice"]
    lm = load_lm(model)
    for sample in samples:
        scores = [r[0][0] for r in sample["resps"]]
        assert sample["acc"] == float(int(np.argmax(scores)) == sample["target"])
        for (context, continuation), score in zip(sample["arguments"], scores):
            prefix = [lm.tokenizer.eot_id, *lm.tokenizer.encode(context)]
            full = prefix + lm.tokenizer.encode(continuation)
            # cvfp's own evaluation: the continuation's nats = the full text's minus the prefix's (causal).
            nats = lm.evaluate([np.array(full)])["loss"] * (len(full) - 1)
            nats -= lm.evaluate([np.array(prefix)])["loss"] * (len(prefix) - 1)
            assert score == pytest.approx(-nats, rel=1e-5)
    assert results["results"]["cvfp_choice"]["acc,none"] == np.mean([s["acc"] for s in samples])


def test_generation_stops_at_until(model):
    harness = cvfp.harness.HarnessLM(str(model))

    class Request:
        args = ("the cat", {"until": ["\n"], "max_gen_toks": 8})

    (text,) = harness.generate_until([Request()])
    lm = load_lm(model)
    greedy = "".join(lm.generate("the cat", 8, temperature=0.0)).split("\n")[0]
    assert text == greedy and "\n" not in text


def test_the_command_line_runs_lm_eval_with_the_cvfp_model(model, tasks):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "cvfp.harness", "--model", "cvfp", "--model_args",
                           f"pretrained={model}", "--tasks", "cvfp_rolling", "--include_path", str(tasks)],
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cvfp_rolling" in done.stdout and "bits_per_byte" in done.stdout
