import json

import pytest

from cvfp.cli import main
from cvfp.config import ConfigError, DataConfig, ModelConfig, Phase1Config, Phase2Config, RunConfig


def test_unknown_key_is_rejected_with_valid_keys_listed():
    with pytest.raises(ConfigError, match="unknown key.*contxt_dim.*valid keys"):
        ModelConfig.from_dict({"contxt_dim": 8})


def test_nested_unknown_key_names_its_section():
    with pytest.raises(ConfigError, match="phase2.patiense"):
        RunConfig.from_dict({"phase2": {"patiense": 2}})


@pytest.mark.parametrize(
    "cls, data, message",
    [
        (ModelConfig, {"context_dim": 0}, "context_dim must be >= 1"),
        (ModelConfig, {"num_layers": 2.5}, "expected an integer"),
        (ModelConfig, {"arch": "f"}, "not one of"),
        (Phase1Config, {"dist_reg_weight": 1.5}, r"dist_reg_weight must be in \[0, 1\]"),
        (Phase1Config, {"dist_reg_weight": -0.1}, r"dist_reg_weight must be in \[0, 1\]"),
        (Phase2Config, {"patience": -1}, "patience must be >= 0"),
        (Phase2Config, {"restore_best": "yes"}, "expected true/false"),
        (DataConfig, {"protocol": "tail"}, "not one of"),
    ],
)
def test_invalid_values(cls, data, message):
    with pytest.raises(ConfigError, match=message):
        cls.from_dict(data)


def test_override_parses_json_values_and_roundtrips():
    cfg = RunConfig().override(["phase2.patience=3", "model.arch=equal-decrease", "phase2.restore_best=true"])
    assert cfg.phase2.patience == 3 and cfg.model.arch == "equal-decrease" and cfg.phase2.restore_best
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


def test_override_unknown_key():
    with pytest.raises(ConfigError, match="unknown key 'patiense'"):
        RunConfig().override(["phase2.patiense=3"])


def test_cli_rejects_bad_override_with_exit_2(caplog):
    assert main(["train", "--set", "phase2.patience=-2", "--samples", "1"]) == 2
    assert "patience must be >= 0" in caplog.text


def test_train_takes_one_sample_size(caplog):
    assert main(["train", "--samples", "5,10"]) == 2
    assert "train takes one sample size" in caplog.text


def test_the_public_api_resolves():
    import cvfp

    for name in cvfp.__all__:
        assert getattr(cvfp, name) is not None, name
    assert cvfp.run_scaling.__module__ == "cvfp.experiments.sweep" and issubclass(cvfp.RunConfig, object)
    with pytest.raises(AttributeError):
        cvfp.no_such_thing  # noqa: B018


def test_the_cli_resolves_the_config_once_and_stores_exactly_it(tiny_corpus, tmp_path):
    from conftest import tiny_cli_args

    from cvfp.cli import build_config, build_parser, main
    from cvfp.data.embeddings import load_embeddings, table_shape

    argv = ["train", "--samples", "5", "--out", str(tmp_path / "t"), *tiny_cli_args(tiny_corpus, tmp_path / "cache")]
    cfg, _ = build_config(build_parser().parse_args(argv))
    assert (cfg.model.vocab_size, cfg.model.embed_dim) == table_shape("random-16") == load_embeddings("random-16").shape
    assert main(argv) == 0
    stored = json.loads((tmp_path / "t" / "config.json").read_text())
    assert stored == json.loads(json.dumps(cfg.point(5).to_dict()))  # what ran is what was resolved
    # The stored config alone reruns that run: the same size, the same result.
    rerun = ["train", "--config", str(tmp_path / "t" / "config.json"), "--out", str(tmp_path / "again"),
             "--no-progress", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    assert main(rerun) == 0
    first, again = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("t", "again"))
    assert again["samples"] == 5 and again["val_loss"] == first["val_loss"]
    with pytest.raises(ConfigError, match="unknown embeddings"):
        table_shape("nope")


def test_config_list_documents_every_field_from_config_py(capsys):
    import dataclasses

    from cvfp.cli import main
    from cvfp.config import RunConfig

    assert main(["config", "--list"]) == 0
    listed = {line.split(" (")[0]: line for line in capsys.readouterr().out.splitlines()}
    expected = [
        f.name for f in dataclasses.fields(RunConfig) if not dataclasses.is_dataclass(getattr(RunConfig(), f.name))
    ]
    for section in ("model", "phase1", "phase2", "metrics", "data", "evaluation"):
        expected += [f"{section}.{f.name}" for f in dataclasses.fields(getattr(RunConfig(), section))]
    assert sorted(listed) == sorted(expected)
    assert all(not line.endswith("): ") for line in listed.values())  # every field has its documentation
    assert (
        listed["phase2.cache_dtype"].startswith("phase2.cache_dtype (Literal[")
        and "Storage dtype" in listed["phase2.cache_dtype"]
    )


def test_config_prints_what_config_reads_back(tmp_path, capsys):
    from cvfp.cli import build_config, build_parser, main

    assert main(["config", "--preset", "medium", "--set", "phase2.epochs=2"]) == 0
    path = tmp_path / "c.json"
    path.write_text(capsys.readouterr().out, encoding="utf-8")
    direct = build_config(build_parser().parse_args(["scaling", "--preset", "medium", "--set", "phase2.epochs=2"]))[0]
    again = build_config(build_parser().parse_args(["scaling", "--preset", "quick", "--config", str(path)]))[0]
    assert again == direct


def test_the_small_cli_conveniences(tmp_path, capsys):
    import subprocess
    import sys

    from cvfp.cli import build_parser, main
    from cvfp.presets import PRESETS

    assert main(["presets"]) == 0
    assert [line.split(":")[0] for line in capsys.readouterr().out.splitlines()] == list(PRESETS)
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.startswith("cvfp ")
    assert build_parser().parse_args(["describe", "-v"]).verbose  # -v after the command
    assert build_parser().parse_args(["eval", "--checkpoint", "x", "--text", "t"]).device == "auto"
    assert build_parser().parse_args(["generate", "--checkpoint", "x"]).device == "auto"
    run = subprocess.run([sys.executable, "-m", "cvfp", "presets"], capture_output=True, text=True, check=False)
    assert run.returncode == 0 and "medium:" in run.stdout  # python -m cvfp (and torchrun -m cvfp)


def test_a_one_value_grid_axis_is_refused_with_the_reason():
    from cvfp.experiments.grid import Axis

    with pytest.raises(ConfigError, match="has one value: .* use --set model.num_layers=2"):
        Axis.parse("model.num_layers=2")


def test_a_config_of_older_cvfp_reads_as_it_ran(tmp_path):
    """Run folders written before model.head and the held-out composition rule: the same model and split."""
    from cvfp.config import RunConfig

    old = RunConfig().to_dict()
    old["model"]["tied_head"] = True
    del old["model"]["head"]
    for key in ("heldout_val_tokens", "heldout_test_tokens"):
        del old["data"][key]
    (tmp_path / "config.json").write_text(json.dumps(old), encoding="utf-8")
    cfg = RunConfig.from_file(tmp_path / "config.json")
    assert cfg.model.head == "tied"
    assert cfg.data.heldout_val_tokens == cfg.data.heldout_test_tokens == 0  # sized by conversations, as it ran
    assert RunConfig().data.heldout_val_tokens > 0  # today's default meets the composition rule
