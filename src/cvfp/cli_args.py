"""The command line's arguments: every command's flags, their help and checks, and the config they build
(``cvfp.cli`` runs the commands)."""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path

from cvfp.config import MAX_SEED, Arch, ConfigError, DataProtocol, RunConfig, read_config_file

DESCRIPTION = "cvfp: context-vector fixed-point language models and their scaling experiments."

# Choices the config defines; the CLI only offers them.
ARCH_CHOICES = list(typing.get_args(Arch))
PROTOCOL_CHOICES = list(typing.get_args(DataProtocol))
DEVICE_CHOICES = list(typing.get_args(typing.get_type_hints(RunConfig)["device"]))


def _int_list(flag: str, minimum: int, maximum: int | None = None):
    def parse(text: str) -> list[int]:
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes comma-separated integers, got {text!r}") from None
        if not values or min(values) < minimum or (maximum is not None and max(values) > maximum):
            bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
            raise argparse.ArgumentTypeError(f"{flag} needs integers {bounds}, got {text!r}")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{flag} lists a value twice: {text!r}")
        return values

    return parse


def add_run_options(p: argparse.ArgumentParser, with_samples: str) -> None:
    from cvfp.presets import PRESETS

    p.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="base configuration (default quick)")
    p.add_argument("--samples", type=_int_list("--samples", 1), help=with_samples)
    p.add_argument(
        "--seeds",
        type=_int_list("--seeds", 0, MAX_SEED),
        help="comma-separated seeds: every run is repeated once per seed, each in its own folder "
        "(default: the config's one seed)",
    )
    p.add_argument("--arch", choices=ARCH_CHOICES, help="architecture (a CVFP design or a baseline)")
    p.add_argument("--corpus", help="sharegpt, chitchat, ultrachat, or a .txt/.jsonl file or folder")
    p.add_argument("--embeddings", help="gpt2, whisper-tiny-en, smollm2-135m, random or random-E")
    p.add_argument("--protocol", choices=PROTOCOL_CHOICES, help="data protocol")
    p.add_argument("--layers", type=int, help="layers L of each block")
    p.add_argument("--context-dim", type=int, help="context width C")
    p.add_argument("--input-tokens", type=int, help="tokens k fed per step")
    p.add_argument("--seed", type=int, help="seed of every random generator")
    p.add_argument("--device", choices=DEVICE_CHOICES, help="compute device (default: the preset's, auto)")
    p.add_argument("--config", type=Path, help="JSON file with config fields overriding the preset")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set phase2.patience=2 (repeatable)",
    )
    p.add_argument("--cache-dir", type=Path, help="where tokenised corpora are cached (default ~/.cache/cvfp)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--log-to",
        type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
        metavar="TRACKERS",
        help="also send every metric to tensorboard, wandb and/or mlflow "
        "(comma-separated; metrics.jsonl stays the record)",
    )
    p.add_argument(
        "--shard-point",
        action="store_const",
        const=True,
        help="under torchrun: train each point over all the ranks instead of spreading whole points "
        "(CVFP designs; needs --set phase1.noise=counter; docs/distributed.md)",
    )


def _margin(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"the margin is a fraction in (0, 1), e.g. 0.01 for 1%; got {text}")
    return value


def _pair(text: str) -> tuple[str, str]:
    names = [part.strip() for part in text.split(",")]
    if len(names) != 2 or not all(names):
        raise argparse.ArgumentTypeError(f"a pair is two model names, A,B (e.g. lm-k4,lm-k4-grad4); got {text!r}")
    return names[0], names[1]


def _pair_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pair",
        action="append",
        type=_pair,
        default=[],
        metavar="A,B",
        help="also pair model A against model B on test (repeatable; the E design is paired against every model "
        "already), e.g. --pair lm-k4,lm-k4-grad4",
    )


def _margin_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--margin",
        type=_margin,
        default=0.01,
        help="equivalence margin of the paired verdicts, as a relative PPL difference (default 0.01: two models "
        "within ±1%% on test, with the whole 95%% interval inside, are called equivalent)",
    )


def build_parser() -> argparse.ArgumentParser:
    """Every command's arguments; ``args.command`` names the command (``cvfp.cli.COMMANDS``)."""
    from cvfp import __version__

    parser = argparse.ArgumentParser(prog="cvfp", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"cvfp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _preview_commands(sub)
    _config_commands(sub)
    _run_commands(sub)
    _model_commands(sub)
    for command in sub.choices.values():  # -v after the command too (``cvfp train -v``)
        command.add_argument(
            "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="log debug messages"
        )
    return parser


def _preview_commands(sub) -> None:
    p = sub.add_parser(
        "describe", help="print the parameter counts of the model a train/scaling with the same flags builds"
    )
    add_run_options(p, "ignored by describe (accepted so that a train command's flags preview unchanged)")
    p = sub.add_parser(
        "data", help="print the train, validation and test sets a train/scaling with the same flags would use"
    )
    add_run_options(p, "comma-separated sample sizes (default: the preset's)")


def _config_commands(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config of a command's flags as JSON (what --config reads)")
    add_run_options(p, "ignored by config (accepted so that a train command's flags preview unchanged)")
    p.add_argument("--list", action="store_true", help="every config field with its type, default and meaning")
    sub.add_parser("presets", help="the presets, one line each")


def _run_commands(sub) -> None:
    p = sub.add_parser("train", help="one run (Phase 1 + Phase 2) on N samples")
    add_run_options(p, "number of training conversations N (default: the preset's largest)")
    p.add_argument("--out", type=Path, help="run directory")

    p = sub.add_parser("scaling", help="the scaling experiment over sample sizes, with fit and report")
    add_run_options(p, "comma-separated sample sizes (default: the preset's)")
    p.add_argument("--out", type=Path, help="output folder (rerun to resume)")
    _margin_option(p)
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="run a full sweep for every combination of these config values (repeatable), "
        "e.g. --grid model.num_layers=1,2 --grid model.context_dim=128,256",
    )
    _variant_option(
        p,
        "a named cell of config overrides (repeatable; 'NAME:' alone is the base config), crossed with any --grid "
        "axes, e.g. --variant seed: --variant c1t1:model.context_layers=1;model.token_layers=1",
    )

    p = sub.add_parser("compare", help="architectures (CVFP designs and baselines) on the same tokens and settings")
    add_run_options(p, "comma-separated sample sizes (default: the preset's)")
    p.add_argument("--out", type=Path, help="output folder (rerun to resume)")
    _margin_option(p)
    _pair_option(p)
    p.add_argument(
        "--archs",
        default="e,equal-decrease",
        help="comma-separated architectures, e.g. e,equal-decrease,random-context,lstm,transformer,ngram "
        "(default: e,equal-decrease, the original's comparison)",
    )
    _variant_option(
        p,
        "also compare a named config of --arch (repeatable; model.arch may be among the fields), e.g. "
        "--variant e-lm:phase1.objective=lm --variant lm-k4:phase1.objective=lm;phase1.lm_sweeps=4",
    )
    p.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="also tune every trained architecture over these values on validation (repeatable), "
        "e.g. --search phase2.learning_rate=0.0003,0.001,0.003 --search phase2.epochs=5,10",
    )
    p.add_argument("--search-samples", type=int, help="size of the search runs (default: the largest --samples)")
    p.add_argument(
        "--tune",
        action="store_true",
        help="tune every trained model at every size on one grid, selected on validation with --tune-seeds, "
        "then train the choice on --seeds and compare on test (docs/baselines.md)",
    )
    p.add_argument(
        "--tune-grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="the tuning grid (repeatable; default phase2.learning_rate=0.0001,0.0003,0.001 and "
        "phase2.schedule=constant,cosine)",
    )
    p.add_argument(
        "--tune-seeds",
        type=_int_list("--tune-seeds", 0, MAX_SEED),
        help="seeds of the tuning runs, none of them a reported seed (default 1000)",
    )
    p.add_argument(
        "--match",
        choices=["parameters", "compute"],
        help="size the LSTM and Transformer bodies to the E design's parameters (default) or its training "
        "FLOPs per token (model.baseline_match)",
    )

    p = sub.add_parser("report", help="rebuild the reports and plots of a sweep, grid or comparison folder")
    p.add_argument("run_dir", type=Path, help="a scaling, grid (scaling --grid/--variant) or compare output folder")
    _pair_option(p)  # kept in the comparison's results.json for later rebuilds


def _variant_option(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=V;KEY=V", help=text)


def _model_commands(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint with the true sequential recurrence")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", type=Path, help="a UTF-8 text file")
    src.add_argument("--corpus", help="a corpus name or path (use with --samples, --split)")
    p.add_argument("--samples", type=int, default=50, help="N for the corpus protocol")
    p.add_argument("--protocol", choices=PROTOCOL_CHOICES, help="protocol (default: the run's)")
    p.add_argument("--split", choices=["train", "val", "test"], default="val", help="which stream")
    p.add_argument(
        "--reset-at-documents",
        action="store_true",
        help="restart the context at each document (blank-line separated in --text)",
    )
    p.add_argument(
        "--jacobi-tolerance",
        type=float,
        default=None,
        help="CVFP models: compute the contexts by Jacobi sweeps until the largest change is at most this "
        "(beyond the original; default: the exact sequential recurrence)",
    )
    p.add_argument("--jacobi-max-sweeps", type=int, default=200, help="cap on the Jacobi sweeps")
    p.add_argument(
        "--device", choices=DEVICE_CHOICES, default="auto", help="compute device (default auto: CUDA when present)"
    )
    p.add_argument("--cache-dir", type=Path, help="tokenisation cache folder")

    p = sub.add_parser("generate", help="sample text from a checkpoint, streamed as produced")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--prompt", default="", help="prompt text")
    p.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch", type=int, default=1, help="independent samples at once")
    p.add_argument(
        "--device", choices=DEVICE_CHOICES, default="auto", help="compute device (default auto: CUDA when present)"
    )

    p = sub.add_parser("export", help="a checkpoint as a Hugging Face model folder (with --push, a Hub repository)")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="the model folder to write")
    p.add_argument("--push", metavar="ORG/NAME", help="also upload the folder to this Hub repository")
    p.add_argument("--private", action="store_true", help="create the Hub repository as private")


# Flags that set one config field each (argparse dest -> dotted field); every other field is --set KEY=VALUE.
FLAG_FIELDS = {
    "arch": "model.arch",
    "layers": "model.num_layers",
    "context_dim": "model.context_dim",
    "input_tokens": "model.input_tokens",
    "corpus": "data.corpus",
    "embeddings": "data.embeddings",
    "protocol": "data.protocol",
    "seed": "seed",
    "device": "device",
    "log_to": "log_to",
    "shard_point": "shard_point",
    "match": "model.baseline_match",
}


def _assignments(data: dict, prefix: str = "") -> list[str]:
    """A config file's fields as ``--set`` assignments (dotted key = JSON value)."""
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += _assignments(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def build_config(args: argparse.Namespace) -> tuple[RunConfig, list[int]]:
    """The preset, then --config FILE, then the flags, then --set: one override path, applied in that order."""
    from cvfp.data.embeddings import resolve_config
    from cvfp.presets import PRESETS

    cfg, samples = PRESETS[args.preset]()
    if args.config is not None:
        try:
            cfg = cfg.override(_assignments(read_config_file(args.config)))
        except ConfigError as err:
            raise ConfigError(f"config file {args.config}: {err}") from None
    flags = [
        f"{field}={json.dumps(getattr(args, dest))}"
        for dest, field in FLAG_FIELDS.items()
        if getattr(args, dest, None) is not None  # a flag only some commands have
    ]
    # Complete before anything runs or is written: the table's vocabulary size and width are the model's.
    cfg = resolve_config(cfg.override([*flags, *args.overrides]))
    # The sizes: --samples, else a run's own (a --config taken from a run folder), else the preset's.
    return cfg, list(args.samples or ([cfg.data.samples] if cfg.data.samples else samples))


def tuning_from_args(args: argparse.Namespace, search: list):
    """``compare --tune``'s grid and seeds (None without --tune), checked against the other flags."""
    from cvfp.experiments.grid import Axis
    from cvfp.experiments.tune import DEFAULT_AXES, DEFAULT_TUNE_SEEDS, Tuning

    if not (args.tune or args.tune_grid or args.tune_seeds):
        return None
    if not args.tune:
        raise ConfigError("--tune-grid and --tune-seeds need --tune")
    if search:
        raise ConfigError(
            "--tune tunes every model at every size; --search (one size, reported seeds) is the older, weaker "
            "form: use one of them"
        )
    tuning = Tuning(
        tuple(Axis.parse(spec) for spec in args.tune_grid) or DEFAULT_AXES, tuple(args.tune_seeds or DEFAULT_TUNE_SEEDS)
    )
    tuning.check(args.seeds or [])
    return tuning
