"""Shipped presets and README commands are valid (the long runs themselves are measured, not tested)."""

import itertools
import re
from pathlib import Path

import pytest

from cvfp.cli import build_config, build_parser
from cvfp.config import RunConfig
from cvfp.presets import PRESETS, SEED_PHASE2_BATCH

README = Path(__file__).resolve().parents[1] / "README.md"


def test_seed_preset_matches_spec():
    cfg, samples = PRESETS["seed"]()
    assert samples == (50, 100, 200, 500)
    assert (cfg.model.arch, cfg.model.num_layers, cfg.model.context_dim, cfg.model.head) == ("e", 6, 768, "full")
    p1, p2 = cfg.phase1, cfg.phase2
    assert (p1.max_iterations, p1.min_iterations, p1.stop_rate, p1.convergence_threshold) == (40, 5, 0.99, 0.03)
    assert (p1.context_noise, p1.dist_reg_weight, p1.batch_tokens, p1.learning_rate, p1.grad_clip) == (
        0.1, 0.8, 8000, 0.002, 1.0)  # fmt: skip
    assert (p2.epochs, p2.patience, p2.restore_best, p2.learning_rate, p2.train_cache) == (
        10, 1, False, 0.001, "parallel")  # fmt: skip
    assert p2.batch_size == SEED_PHASE2_BATCH
    assert cfg.data.protocol == "seed" and cfg.data.val_fraction == 0.1 and cfg.seed == 42


def test_quick_preset_is_heldout_with_patience_2_and_restore():
    cfg, samples = PRESETS["quick"]()
    assert len(samples) == 4 and cfg.data.protocol == "heldout"
    assert cfg.phase2.patience == 2 and cfg.phase2.restore_best
    # Every point's test + validation + train chats come from the pool.
    d = cfg.data
    assert d.heldout_test_conversations >= 40 and d.heldout_val_conversations >= 40 and d.heldout_max_share == 0.05
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def _readme_commands():
    blocks = re.findall(r"```\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)
    return [line for block in blocks for line in block.splitlines() if line.startswith(("bash ", "cvfp ", ".venv"))]


def test_readme_main_commands_parse():
    commands = _readme_commands()
    assert "bash scripts/test.sh" in commands
    main_job = next(c for c in commands if "cvfp scaling" in c)
    argv = main_job.split("cvfp ", 1)[1].split()
    args = build_parser().parse_args(argv)
    cfg, samples = build_config(args)
    assert args.preset == "quick" and cfg == PRESETS["quick"]().config and samples == list(PRESETS["quick"]().samples)
    assert "bash scripts/test.sh" in (README.parent / ".ci" / "run").read_text()


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_cli_flags_override_presets(name):
    args = build_parser().parse_args(
        ["scaling", "--preset", name, "--arch", "equal-decrease", "--samples", "5,7", "--set", "phase2.epochs=2"]
    )
    cfg, samples = build_config(args)
    assert cfg.model.arch == "equal-decrease" and samples == [5, 7] and cfg.phase2.epochs == 2


def test_the_medium_preset_reaches_a_million_train_tokens_with_held_out_chats(tmp_path):
    """The real split: five sizes 2x apart, the largest >= 1M train tokens, >= 100 validation and test chats."""
    from cvfp.data.corpora import load_corpus
    from cvfp.data.protocols import make_split
    from cvfp.data.tokenizers import get_tokenizer

    cfg, samples = PRESETS["medium"]()
    assert len(samples) == 5 and all(b == 2 * a for a, b in itertools.pairwise(samples))
    assert cfg.model.head == "adaptive" and cfg.data.corpus == "sharegpt" and cfg.data.protocol == "heldout"
    split = make_split(load_corpus("sharegpt"), get_tokenizer("smollm2"), samples[-1], cfg.data, tmp_path)
    assert split.info["train_tokens"] >= 1_000_000
    for which, starts in (("val", split.val_starts), ("test", split.test_starts)):
        composition = split.info[f"{which}_composition"]  # the composition rule, on the real split
        assert composition["conversations"] >= 100 and composition["largest_share"] <= 0.05
        assert len(starts) == composition["conversations"]  # one document per conversation


def test_the_smoke_preset_runs_the_whole_pipeline(tmp_path):
    """``cvfp scaling --preset smoke``: both phases at two sizes, the report, plots and checkpoints."""
    from cvfp.cli import main

    out = tmp_path / "smoke"
    assert main(["scaling", "--preset", "smoke", "--out", str(out), "--no-progress", "--cache-dir",
                 str(tmp_path / "cache")]) == 0  # fmt: skip
    for n in PRESETS["smoke"]().samples:
        assert (out / "points" / f"n{n}-seed42" / "checkpoint" / "model.safetensors").is_file()
    assert (out / "report.md").is_file() and (out / "ppl_vs_tokens.png").stat().st_size > 1000


def test_every_readme_how_to_command_parses():
    """The commands quoted inline in the README's how-tos are valid command lines of this cvfp."""
    import shlex

    commands = re.findall(r"`(cvfp [^`]+)`", README.read_text(encoding="utf-8"))
    assert len(commands) >= 10
    for command in commands:
        argv = shlex.split(re.sub(r"\[([^\]]*)\]", r"\1", command))[1:]  # an optional part [--x Y] taken
        build_parser().parse_args(argv)
