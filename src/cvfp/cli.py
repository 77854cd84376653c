"""Command line: ``cvfp describe | data | train | scaling | compare | report | eval | generate | export``.

A thin layer: every command builds a config and calls the library.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cvfp.cli_args import build_config, build_parser, tuning_from_args
from cvfp.config import ConfigError, RunConfig
from cvfp.strict import upgrade_run_dict

log = logging.getLogger("cvfp")


# ------------------------------------------------------------------ commands
def cmd_describe(args: argparse.Namespace) -> int:
    import torch

    from cvfp.models import CVFPModel, build_model, e_design_body_parameters, spec

    cfg = build_config(args)[0].model  # the model a train / scaling with these flags builds
    print(
        f"{cfg.arch}: L={cfg.num_layers} C={cfg.context_dim} E={cfg.embed_dim} k={cfg.input_tokens} V={cfg.vocab_size}"
    )
    family = spec(cfg.arch).family
    if family == "cvfp":
        print(
            f"ContextLayers {cfg.context_depth}, TokenLayers {cfg.token_depth}, context mode {cfg.context_mode}, "
            f"activation {cfg.activation}"
        )
    if family == "count":
        print("interpolated Kneser-Ney, orders " + ", ".join(map(str, cfg.ngram_orders)) + ": no trained parameters")
        return 0
    model = build_model(cfg, torch.zeros(cfg.vocab_size, cfg.embed_dim), seed=0)
    counts = model.parameter_counts()
    body = (
        (("ContextBlock", "context_block"), ("TokenBlock", "token_block"))
        if isinstance(model, CVFPModel)
        else (("body", "body"),)
    )
    shared = (("head", "head"), ("embedding (frozen)", "embedding_frozen"), ("trainable", "trainable"))
    rows = (*body, *shared, ("total", "total"))
    for label, key in rows:
        print(f"{label:<20}{counts[key]:>14,}")
    if not isinstance(model, CVFPModel):
        target = e_design_body_parameters(cfg)
        print(
            f"{'E design body':<20}{target:>14,}  (ContextBlock + TokenBlock at this config; "
            f"body / E design body = {counts['body'] / target:.3f})"
        )
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from cvfp.strict import field_docs

    if args.list:
        for name, kind, default, doc in field_docs(RunConfig):
            print(f"{name} ({kind}, default {default}): {doc}")
        return 0
    print(json.dumps(build_config(args)[0].to_dict(), indent=2))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from cvfp.presets import PRESETS

    for name, preset in PRESETS.items():
        cfg, samples = preset()
        doc = (preset.__doc__ or "").strip().splitlines()[0]
        print(
            f"{name}: {doc} (sizes {', '.join(map(str, samples))}; corpus {cfg.data.corpus}, "
            f"{cfg.data.protocol} protocol, L = {cfg.model.num_layers}, C = {cfg.model.context_dim}, "
            f"{cfg.model.head} head)"
        )
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from cvfp.data.corpora import load_corpus
    from cvfp.data.embeddings import table_tokenizer
    from cvfp.data.protocols import Composition, default_cache_dir, make_split
    from cvfp.data.tokenizers import get_tokenizer

    cfg, samples = build_config(args)
    tokenizer = get_tokenizer(table_tokenizer(cfg.data.embeddings))
    corpus = load_corpus(cfg.data.corpus)
    print(f"corpus {corpus.name}: {len(corpus.conversations):,} conversations {corpus.notes or ''}")
    print(f"protocol {cfg.data.protocol}, tokenizer {tokenizer.name} (of the {cfg.data.embeddings} embeddings)")
    for n in samples:
        split = make_split(corpus, tokenizer, n, cfg.data, args.cache_dir or default_cache_dir())
        print(f"N = {n}")
        for key, value in split.info.items():
            if isinstance(value, dict):  # a held-out set's composition
                value = Composition(**value).text()
            print(f"  {key:<20}{value if value is None or isinstance(value, str) else f'{value:,}'}")
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
        print(
            f"val PPL over {len(seeds)} seeds: mean {s['mean']:.1f}, sd {s['sd']:.1f}, "
            f"min {s['min']:.1f}, max {s['max']:.1f}"
        )
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
    grid = run_grid(
        cfg, axes, samples, out, seeds=args.seeds, variants=variants, options=_options(args), margin=args.margin
    )
    if distributed_main():
        print((out / "grid.md").read_text(encoding="utf-8"))
    return 1 if any(c["failures"] for c in grid["cells"]) else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from cvfp.experiments.compare import parse_archs, run_compare
    from cvfp.experiments.grid import Axis, Variant

    cfg, samples = build_config(args)
    archs = parse_archs(args.archs)
    search = [Axis.parse(spec) for spec in args.search]
    tuning = tuning_from_args(args, search)
    out = args.out or Path("runs") / f"compare-{args.preset}"
    results = run_compare(
        cfg,
        archs,
        samples,
        out,
        seeds=args.seeds,
        search=search,
        search_samples=args.search_samples,
        options=_options(args),
        margin=args.margin,
        tuning=tuning,
        variants=[Variant.parse(text) for text in args.variant],
        pairs=args.pair,
    )
    if distributed_main():
        print((out / "compare.md").read_text(encoding="utf-8"))
    return 1 if any(r["failures"] for r in results.values()) else 0


def cmd_report(args: argparse.Namespace) -> int:
    from cvfp.experiments.rebuild import rebuild

    text, path = rebuild(args.run_dir, args.pair)
    print(text)
    print(f"\nreport: {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from cvfp.config import EvalConfig
    from cvfp.data.corpora import load_corpus, read_utf8
    from cvfp.data.protocols import make_split
    from cvfp.inference import CVFPLM, load_lm

    if args.jacobi_tolerance is not None:  # the config's rules, before anything is loaded
        EvalConfig.from_dict({"recurrence": "jacobi", "jacobi_tolerance": args.jacobi_tolerance,
                              "jacobi_max_sweeps": args.jacobi_max_sweeps})  # fmt: skip
    if args.text is not None and not args.text.is_file():
        raise ConfigError(f"--text {args.text}: no such file")
    lm = load_lm(args.checkpoint, device=_device(args.device))
    if args.jacobi_tolerance is not None and not isinstance(lm, CVFPLM):
        raise ConfigError(f"--jacobi-tolerance is for CVFP models; {args.checkpoint} holds a {lm.model.cfg.arch} model")
    if args.text is not None:
        text = read_utf8(args.text)
        docs = [lm.tokenizer.encode(d) for d in (text.split("\n\n") if args.reset_at_documents else [text])]
    else:
        run_cfg = RunConfig.from_dict(upgrade_run_dict(dict(lm.meta["run_config"])))
        data = run_cfg.data.replace(corpus=args.corpus, protocol=args.protocol or run_cfg.data.protocol)
        split = make_split(load_corpus(data.corpus), lm.tokenizer, args.samples, data, args.cache_dir)
        stream = {"train": split.train, "val": split.val, "test": split.test}[args.split]
        if stream is None:
            raise ConfigError(f"protocol {data.protocol} has no {args.split} split")
        docs = [stream]
    jacobi = {"jacobi_tolerance": args.jacobi_tolerance, "jacobi_max_sweeps": args.jacobi_max_sweeps}
    result = lm.evaluate(docs, reset_each=args.reset_at_documents, **(jacobi if isinstance(lm, CVFPLM) else {}))
    bpb = "-" if result["bpb"] is None else f"{result['bpb']:.4f}"
    print(
        f"tokens {result['tokens']:,}  loss {result['loss']:.4f}  PPL {result['ppl']:.2f}  "
        f"acc {100 * result['acc']:.2f}%  bits/byte {bpb}"
    )
    if "jacobi" in result:
        j = result["jacobi"]
        state = "converged" if j["converged"] else "NOT converged (raise --jacobi-max-sweeps)"
        print(
            f"Jacobi: {j['sweeps']} sweeps, final residual {j['residual']:.2e} (tolerance "
            f"{args.jacobi_tolerance:g}): {state}"
        )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from cvfp.inference import CVFPLM, check_sampling

    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.batch, args.seed)
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
    from cvfp.io.lock import inside_run_folder

    run = inside_run_folder(args.out)
    if run is not None:  # an export would overwrite the run's own config.json
        raise ConfigError(f"--out {args.out} lies inside the cvfp run folder {run}: export to a folder of its own")
    lm = load_lm(args.checkpoint)
    if isinstance(lm, NgramLM):
        raise ConfigError(
            f"{args.checkpoint} holds an n-gram model, which has no Hugging Face form (its "
            "checkpoint folder is the whole model: copy it)"
        )
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


COMMANDS = {
    "describe": cmd_describe,
    "config": cmd_config,
    "presets": cmd_presets,
    "data": cmd_data,
    "train": cmd_train,
    "scaling": cmd_scaling,
    "compare": cmd_compare,
    "report": cmd_report,
    "eval": cmd_eval,
    "generate": cmd_generate,
    "export": cmd_export,
}

# Commands that torchrun may spread over processes (cvfp.distributed), and ``train`` with --shard-point (one
# point over every rank); the others run as one process.
SPREAD_COMMANDS = ("scaling", "compare")
TORCHRUN_COMMANDS = (*SPREAD_COMMANDS, "train")


INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Run one command; Ctrl-C at any moment, torch's import included, ends it with one line and exit 130."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # before the command's own handler is in place (the heavy imports)
        sys.stderr.write("interrupted before the command started; nothing was written\n")
        return INTERRUPTED


def _main(argv: list[str] | None) -> int:
    from cvfp import distributed

    args = build_parser().parse_args(argv)
    args.func = COMMANDS[args.command]
    me = distributed.ranks()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s " + (f"[rank {me.rank}] " if me.world > 1 else "") + "%(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if me.world > 1 and args.command not in TORCHRUN_COMMANDS:
        log.error(
            "cvfp %s runs as one process; torchrun spreads only %s (and shards `train --shard-point`)",
            args.command,
            " and ".join(SPREAD_COMMANDS),
        )
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
        return INTERRUPTED


if __name__ == "__main__":
    from cvfp.__main__ import entry

    entry()
