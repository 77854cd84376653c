"""Command line: ``cvfp describe | data | train | scaling | compare | report | eval | generate | export``.

A thin layer: every command builds a config and calls the library.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import typing
from pathlib import Path

from cvfp.config import (
    Arch,
    ConfigError,
    DataConfig,
    DataProtocol,
    ModelConfig,
    RunConfig,
    read_config_file,
)  # fmt: skip

# Choices the config defines; the CLI only offers them.
ARCH_CHOICES = list(typing.get_args(Arch))
PROTOCOL_CHOICES = list(typing.get_args(DataProtocol))
DEVICE_CHOICES = list(typing.get_args(typing.get_type_hints(RunConfig)["device"]))

# Flags that set one config field each (argparse dest -> dotted field); every other field is --set KEY=VALUE.
FLAG_FIELDS = {
    "arch": "model.arch", "layers": "model.num_layers", "context_dim": "model.context_dim",
    "input_tokens": "model.input_tokens", "corpus": "data.corpus", "embeddings": "data.embeddings",
    "protocol": "data.protocol", "seed": "seed", "device": "device", "log_to": "log_to",
    "shard_point": "shard_point",
}  # fmt: skip

log = logging.getLogger("cvfp")


def _assignments(data: dict, prefix: str = "") -> list[str]:
    """A config file's fields as ``--set`` assignments (dotted key = JSON value)."""
    out = []
    for key, value in data.items():
        if isinstance(value, dict):
            out += _assignments(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


def _int_list(flag: str, minimum: int):
    def parse(text: str) -> list[int]:
        try:
            values = [int(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes comma-separated integers, got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"{flag} needs integers >= {minimum}, got {text!r}")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"{flag} lists a value twice: {text!r}")
        return values

    return parse


def add_run_options(p: argparse.ArgumentParser, with_samples: str) -> None:
    from cvfp.presets import PRESETS

    p.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="base configuration (default quick)")
    p.add_argument("--samples", type=_int_list("--samples", 1), help=with_samples)
    p.add_argument("--seeds", type=_int_list("--seeds", 0),
                   help="comma-separated seeds: every run is repeated once per seed, each in its own folder "
                   "(default: the config's one seed)")  # fmt: skip
    p.add_argument("--arch", choices=ARCH_CHOICES, help="architecture (a CVFP design or a baseline)")
    p.add_argument("--corpus", help="sharegpt, chitchat, ultrachat, or a .txt/.jsonl file or folder")
    p.add_argument("--embeddings", help="gpt2, whisper-tiny-en, smollm2-135m, random or random-E")
    p.add_argument("--protocol", choices=PROTOCOL_CHOICES, help="data protocol")
    p.add_argument("--layers", type=int, help="layers L of each block")
    p.add_argument("--context-dim", type=int, help="context width C")
    p.add_argument("--input-tokens", type=int, help="tokens k fed per step")
    p.add_argument("--seed", type=int, help="seed of every random generator")
    p.add_argument("--device", choices=DEVICE_CHOICES, help="compute device")
    p.add_argument("--config", type=Path, help="JSON file with config fields overriding the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set phase2.patience=2 (repeatable)")  # fmt: skip
    p.add_argument("--cache-dir", type=Path, help="where tokenised corpora are cached (default ~/.cache/cvfp)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--log-to", type=lambda text: [t.strip() for t in text.split(",") if t.strip()],
                   metavar="TRACKERS", help="also send every metric to tensorboard, wandb and/or mlflow "
                   "(comma-separated; metrics.jsonl stays the record)")  # fmt: skip
    p.add_argument("--shard-point", action="store_const", const=True,
                   help="under torchrun: train each point over all the ranks instead of spreading whole points "
                   "(CVFP designs; needs --set phase1.noise=counter; docs/distributed.md)")  # fmt: skip


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
    flags = [f"{field}={json.dumps(getattr(args, dest))}" for dest, field in FLAG_FIELDS.items()
             if getattr(args, dest) is not None]  # fmt: skip
    # Complete before anything runs or is written: the table's vocabulary size and width are the model's.
    cfg = resolve_config(cfg.override([*flags, *args.overrides]))
    # The sizes: --samples, else a run's own (a --config taken from a run folder), else the preset's.
    return cfg, list(args.samples or ([cfg.data.samples] if cfg.data.samples else samples))


# ------------------------------------------------------------------ commands
def cmd_describe(args: argparse.Namespace) -> int:
    import torch

    from cvfp.models import CVFPModel, build_model, e_design_body_parameters, spec

    cfg = ModelConfig(
        arch=args.arch, num_layers=args.layers, context_dim=args.context_dim, embed_dim=args.embed_dim,
        input_tokens=args.input_tokens, vocab_size=args.vocab, tied_head=args.tied_head,
    ).override(item.removeprefix("model.") for item in args.overrides)  # fmt: skip
    print(
        f"{cfg.arch}: L={cfg.num_layers} C={cfg.context_dim} E={cfg.embed_dim} k={cfg.input_tokens} V={cfg.vocab_size}"
    )
    family = spec(cfg.arch).family
    if family == "cvfp":
        print(f"ContextLayers {cfg.context_depth}, TokenLayers {cfg.token_depth}, context mode {cfg.context_mode}, "
              f"activation {cfg.activation}")  # fmt: skip
    if family == "count":
        print("interpolated Kneser-Ney, orders " + ", ".join(map(str, cfg.ngram_orders)) + ": no trained parameters")
        return 0
    model = build_model(cfg, torch.zeros(cfg.vocab_size, cfg.embed_dim), seed=0)
    counts = model.parameter_counts()
    if isinstance(model, CVFPModel):
        rows = (("ContextBlock", "context_block"), ("TokenBlock", "token_block"), ("head", "head"),
                ("embedding (frozen)", "embedding_frozen"), ("trainable", "trainable"), ("total", "total"))  # fmt: skip
    else:
        rows = (("body", "body"), ("head", "head"), ("embedding (frozen)", "embedding_frozen"),
                ("trainable", "trainable"), ("total", "total"))  # fmt: skip
    for label, key in rows:
        print(f"{label:<20}{counts[key]:>14,}")
    if not isinstance(model, CVFPModel):
        target = e_design_body_parameters(cfg)
        print(f"{'E design body':<20}{target:>14,}  (ContextBlock + TokenBlock at this config; "
              f"body / E design body = {counts['body'] / target:.3f})")  # fmt: skip
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from cvfp.data.corpora import load_corpus
    from cvfp.data.embeddings import EMBEDDINGS
    from cvfp.data.protocols import default_cache_dir, make_split
    from cvfp.data.tokenizers import get_tokenizer

    cfg = DataConfig(corpus=args.corpus, protocol=args.protocol)
    tokenizer = get_tokenizer(args.tokenizer)
    corpus = load_corpus(cfg.corpus)
    split = make_split(corpus, tokenizer, args.samples, cfg, args.cache_dir or default_cache_dir())
    print(f"corpus {corpus.name}: {len(corpus.conversations):,} conversations {corpus.notes or ''}")
    print(f"protocol {cfg.protocol}, tokenizer {tokenizer.name} (embeddings: {', '.join(EMBEDDINGS)})")
    for key, value in split.info.items():
        print(f"  {key:<20}{value if value is None else f'{value:,}'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cvfp import distributed
    from cvfp.experiments.results import spread
    from cvfp.io.rundir import finished_summary
    from cvfp.training.point import train_point

    cfg, samples = build_config(args)
    if args.samples is not None and len(args.samples) != 1:
        raise ConfigError(f"train takes one sample size, got {args.samples}; use `cvfp scaling` for several")
    if distributed.ranks().world > 1 and not cfg.shard_point:
        raise ConfigError("under torchrun, cvfp train trains its point over all the ranks: add --shard-point")
    n = samples[-1]
    out = args.out or Path("runs") / f"train-{cfg.model.arch}-n{n}"
    seeds = args.seeds or [cfg.seed]
    ppls = []
    for seed in seeds:
        run_dir = out / f"seed{seed}" if args.seeds else out
        summary = finished_summary(run_dir, cfg.point(n, seed))
        if summary is not None:
            log.info("%s holds this run, finished earlier: not retrained (use another --out to train again)", run_dir)
        else:
            summary = train_point(cfg.replace(seed=seed), n, run_dir, options=_options(args))
        ppls.append(summary["val_ppl"])
        if not distributed_main():
            continue
        print(
            f"N={n} seed {seed}: train tokens {summary['train_tokens']:,}  val PPL {summary['val_ppl']:.1f}  acc "
            f"{100 * summary['val_acc']:.1f}%  bits/byte {summary['val_bpb']:.3f}  run dir {run_dir}"
        )
    if len(seeds) > 1 and distributed_main():
        s = spread(ppls)
        print(f"val PPL over {len(seeds)} seeds: mean {s['mean']:.1f}, sd {s['sd']:.1f}, "
              f"min {s['min']:.1f}, max {s['max']:.1f}")  # fmt: skip
    return 0


def cmd_scaling(args: argparse.Namespace) -> int:
    from cvfp.experiments.report import terminal_summary
    from cvfp.experiments.sweep import run_scaling

    cfg, samples = build_config(args)
    if args.grid or args.variant:
        return _run_grid(args, cfg, samples)
    out = args.out or Path("runs") / f"scaling-{args.preset}-{cfg.model.arch}"
    results = run_scaling(cfg, samples, out, seeds=args.seeds, options=_options(args))
    if distributed_main():
        print(terminal_summary(results))
        print(f"\nreport: {out / 'report.md'}")
    return 1 if results["failures"] else 0


def _run_grid(args: argparse.Namespace, cfg: RunConfig, samples: list[int]) -> int:
    from cvfp.experiments.grid import Axis, Variant, run_grid

    axes = [Axis.parse(spec) for spec in args.grid]
    variants = [Variant.parse(spec) for spec in args.variant]
    out = args.out or Path("runs") / f"grid-{args.preset}"
    grid = run_grid(cfg, axes, samples, out, seeds=args.seeds, variants=variants, options=_options(args))
    if distributed_main():
        print((out / "grid.md").read_text(encoding="utf-8"))
    return 1 if any(c["failures"] for c in grid["cells"]) else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from cvfp.experiments.compare import parse_archs, run_compare
    from cvfp.experiments.grid import Axis

    cfg, samples = build_config(args)
    archs = parse_archs(args.archs)
    search = [Axis.parse(spec) for spec in args.search]
    out = args.out or Path("runs") / f"compare-{args.preset}"
    results = run_compare(cfg, archs, samples, out, seeds=args.seeds, search=search,
                          search_samples=args.search_samples, options=_options(args))  # fmt: skip
    if distributed_main():
        print((out / "compare.md").read_text(encoding="utf-8"))
    return 1 if any(r["failures"] for r in results.values()) else 0


def cmd_report(args: argparse.Namespace) -> int:
    from cvfp.experiments.report import terminal_summary, write_report
    from cvfp.experiments.results import ResultsFormatError, check_format
    from cvfp.io.rundir import read_json

    path = args.run_dir / "results.json"
    try:
        results = check_format(read_json(path), str(path))
    except FileNotFoundError:
        raise ResultsFormatError(f"{path} does not exist: not a cvfp sweep folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultsFormatError(f"{path} cannot be read as JSON: {err}") from None
    try:
        summary = terminal_summary(results)
        path = write_report(results, args.run_dir)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:  # a hand-edited or damaged file
        raise ResultsFormatError(f"{path} is malformed: {type(err).__name__}: {err}") from None
    print(summary)
    print(f"\nreport: {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from cvfp.data.corpora import load_corpus, read_utf8
    from cvfp.data.protocols import make_split
    from cvfp.inference import CVFPLM, load_lm

    lm = load_lm(args.checkpoint, device=_device(args.device))
    if args.jacobi_tolerance is not None and not isinstance(lm, CVFPLM):
        raise ConfigError(f"--jacobi-tolerance is for CVFP models; {args.checkpoint} holds a {lm.model.cfg.arch} model")
    if args.text is not None:
        text = read_utf8(args.text)
        docs = [lm.tokenizer.encode(d) for d in (text.split("\n\n") if args.reset_at_documents else [text])]
    else:
        run_cfg = RunConfig.from_dict(lm.meta["run_config"])
        data = run_cfg.data.replace(corpus=args.corpus, protocol=args.protocol or run_cfg.data.protocol)
        split = make_split(load_corpus(data.corpus), lm.tokenizer, args.samples, data, args.cache_dir)
        stream = {"train": split.train, "val": split.val, "test": split.test}[args.split]
        if stream is None:
            raise ConfigError(f"protocol {data.protocol} has no {args.split} split")
        docs = [stream]
    if args.jacobi_tolerance is not None:
        result = lm.evaluate(docs, reset_each=args.reset_at_documents, jacobi_tolerance=args.jacobi_tolerance,
                             jacobi_max_sweeps=args.jacobi_max_sweeps)  # fmt: skip
    else:
        result = lm.evaluate(docs, reset_each=args.reset_at_documents)
    bpb = "-" if result["bpb"] is None else f"{result['bpb']:.4f}"
    print(f"tokens {result['tokens']:,}  loss {result['loss']:.4f}  PPL {result['ppl']:.2f}  "
          f"acc {100 * result['acc']:.2f}%  bits/byte {bpb}")  # fmt: skip
    if "jacobi" in result:
        j = result["jacobi"]
        state = "converged" if j["converged"] else "NOT converged (raise --jacobi-max-sweeps)"
        print(f"Jacobi: {j['sweeps']} sweeps, final residual {j['residual']:.2e} (tolerance "
              f"{args.jacobi_tolerance:g}): {state}")  # fmt: skip
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from cvfp.inference import CVFPLM, check_sampling

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.batch)
    lm = CVFPLM.from_checkpoint(args.checkpoint, device=_device(args.device))
    kwargs = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
    if args.batch == 1:
        sys.stdout.write(args.prompt)
        for piece in lm.generate(args.prompt, args.max_new_tokens, **kwargs):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    ids = list(lm.generate_ids(lm.tokenizer.encode(args.prompt), args.max_new_tokens, batch=args.batch, **kwargs))
    samples = torch.stack(ids, dim=1) if ids else torch.zeros(args.batch, 0, dtype=torch.long)
    for i, row in enumerate(samples.tolist()):
        sys.stdout.write(f"--- sample {i}\n{args.prompt}{lm.tokenizer.decode(row)}\n")
    return 0


def distributed_main() -> bool:
    """Whether this process prints what all ranks share (always, in one process)."""
    from cvfp import distributed

    return distributed.ranks().main


def cmd_export(args: argparse.Namespace) -> int:
    from cvfp.inference import NgramLM, load_lm
    from cvfp.io import hub

    lm = load_lm(args.checkpoint)
    if isinstance(lm, NgramLM):
        raise ConfigError(f"{args.checkpoint} holds an n-gram model, which has no Hugging Face form (its "
                          "checkpoint folder is the whole model: copy it)")  # fmt: skip
    folder = lm.save_pretrained(args.out)
    print(f"saved {lm.model.cfg.arch} model to {folder} (model.safetensors, checkpoint.json, config.json, README.md)")
    if args.push:
        print(f"pushed to {args.push}: {hub.push_to_hub(folder, args.push, private=args.private)}")
    return 0


def _options(args: argparse.Namespace):
    """How the command's points run (``RunOptions``): the tokenised-corpus cache, progress bars, the preset."""
    from cvfp.training.point import RunOptions

    return RunOptions(cache_dir=args.cache_dir, progress=not args.no_progress, preset=args.preset)


def _device(name: str) -> str:
    from cvfp.device import resolve_device

    return str(resolve_device(name))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cvfp", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("describe", help="print parameter counts of a model")
    p.add_argument("--arch", choices=ARCH_CHOICES, default="e", help="architecture")
    p.add_argument("--layers", type=int, default=6, help="layers L")
    p.add_argument("--context-dim", type=int, default=768, help="context width C")
    p.add_argument("--embed-dim", type=int, default=768, help="embedding width E")
    p.add_argument("--input-tokens", type=int, default=1, help="tokens k per step")
    p.add_argument("--vocab", type=int, default=50257, help="vocabulary size V")
    p.add_argument("--tied-head", action="store_true", help="tie the head to the frozen embedding")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="any model field, e.g. --set model.context_mode=final --set model.token_layers=1")  # fmt: skip
    p.set_defaults(func=cmd_describe)

    p = sub.add_parser("data", help="print the token counts of a corpus under a protocol")
    p.add_argument("--corpus", default="sharegpt", help="corpus name or path")
    p.add_argument("--samples", type=int, required=True, help="training conversations N")
    p.add_argument("--protocol", choices=PROTOCOL_CHOICES, default="seed", help="data protocol")
    p.add_argument("--tokenizer", choices=["gpt2", "smollm2"], default="smollm2",
                   help="tokenizer (default: that of the default embeddings, smollm2-135m)")  # fmt: skip
    p.add_argument("--cache-dir", type=Path, help="tokenisation cache folder")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="one run (Phase 1 + Phase 2) on N samples")
    add_run_options(p, "number of training conversations N (default: the preset's largest)")
    p.add_argument("--out", type=Path, help="run directory")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("scaling", help="the scaling experiment over sample sizes, with fit and report")
    add_run_options(p, "comma-separated sample sizes (default: the preset's)")
    p.add_argument("--out", type=Path, help="output folder (rerun to resume)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="run a full sweep for every combination of these config values (repeatable), "
                   "e.g. --grid model.num_layers=1,2 --grid model.context_dim=128,256")  # fmt: skip
    p.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=V;KEY=V",
                   help="a named cell of config overrides (repeatable; 'NAME:' alone is the base config), crossed "
                   "with any --grid axes, e.g. --variant seed: --variant c1t1:model.context_layers=1;model.token_layers=1")  # fmt: skip
    p.set_defaults(func=cmd_scaling)

    p = sub.add_parser("compare", help="architectures (CVFP designs and baselines) on the same tokens and settings")
    add_run_options(p, "comma-separated sample sizes (default: the preset's)")
    p.add_argument("--out", type=Path, help="output folder (rerun to resume)")
    p.add_argument(
        "--archs",
        default="e,equal-decrease",
        help="comma-separated architectures, e.g. e,equal-decrease,random-context,lstm,transformer,ngram "
        "(default: e,equal-decrease, the seed's comparison)",
    )
    p.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="also tune every trained architecture over these values on validation (repeatable), "
        "e.g. --search phase2.learning_rate=0.0003,0.001,0.003 --search phase2.epochs=5,10",
    )
    p.add_argument("--search-samples", type=int, help="size of the search runs (default: the largest --samples)")  # fmt: skip
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="rebuild report.md and plots from RUN_DIR/results.json")
    p.add_argument("run_dir", type=Path, help="a scaling output folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("eval", help="evaluate a checkpoint with the true sequential recurrence")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", type=Path, help="a UTF-8 text file")
    src.add_argument("--corpus", help="a corpus name or path (use with --samples, --split)")
    p.add_argument("--samples", type=int, default=50, help="N for the corpus protocol")
    p.add_argument("--protocol", choices=PROTOCOL_CHOICES, help="protocol (default: the run's)")
    p.add_argument("--split", choices=["train", "val", "test"], default="val", help="which stream")
    p.add_argument("--reset-at-documents", action="store_true",
                   help="restart the context at each document (blank-line separated in --text)")  # fmt: skip
    p.add_argument("--jacobi-tolerance", type=float, default=None,
                   help="CVFP models: compute the contexts by Jacobi sweeps until the largest change is at most this "
                        "(beyond the original; default: the exact sequential recurrence)")  # fmt: skip
    p.add_argument("--jacobi-max-sweeps", type=int, default=200, help="cap on the Jacobi sweeps")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="cpu", help="compute device")
    p.add_argument("--cache-dir", type=Path, help="tokenisation cache folder")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("generate", help="sample text from a checkpoint, streamed as produced")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--prompt", default="", help="prompt text")
    p.add_argument("--max-new-tokens", type=int, default=50, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch", type=int, default=1, help="independent samples at once")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="cpu", help="compute device")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="a checkpoint as a Hugging Face model folder (with --push, a Hub repository)")
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="the model folder to write")
    p.add_argument("--push", metavar="ORG/NAME", help="also upload the folder to this Hub repository")
    p.add_argument("--private", action="store_true", help="create the Hub repository as private")
    p.set_defaults(func=cmd_export)
    return parser


# Commands that torchrun may spread over processes (cvfp.distributed), and ``train`` with --shard-point (one
# point over every rank); the others run as one process.
SPREAD_COMMANDS = ("scaling", "compare")
TORCHRUN_COMMANDS = (*SPREAD_COMMANDS, "train")


def main(argv: list[str] | None = None) -> int:
    from cvfp import distributed

    args = build_parser().parse_args(argv)
    me = distributed.ranks()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s " + (f"[rank {me.rank}] " if me.world > 1 else "") + "%(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if me.world > 1 and args.command not in TORCHRUN_COMMANDS:
        log.error("cvfp %s runs as one process; torchrun spreads only %s (and shards `train --shard-point`)",
                  args.command, " and ".join(SPREAD_COMMANDS))  # fmt: skip
        return 2
    distributed.init()
    from cvfp.errors import CvfpError, failed_stage

    failed_stage()  # forget an earlier command's (in-process callers run several)
    try:
        return args.func(args)
    except CvfpError as err:
        log.error("%s", err)
        return 2
    except OSError as err:  # a full disk, a read-only or missing folder, a file where a folder should be
        where = failed_stage()
        where = f" (during {where}); finished runs are kept" if where else ""
        log.error("%s: %s%s", err.strerror or err, err.filename or "", where)
        return 1
    except KeyboardInterrupt:
        where = failed_stage()
        where = f" during {where}" if where else ""
        log.error("interrupted%s; finished runs are kept: rerun the same command to resume", where)
        return 130


if __name__ == "__main__":
    sys.exit(main())
