#!/usr/bin/env python3
"""Benchmarks of training memory and speed: reversible vs non-reversible vs activation checkpointing.

    python tools/benchmark.py table --threads 2 --out docs/benchmarks/memory_table.json     # the paper's table
    python tools/benchmark.py sweep --threads 2 --out docs/benchmarks/depth_sweep.json      # memory against depth
    python tools/benchmark.py time --cfg configs/ImageNet/REV_VIT_S.yaml --out vits_time.json  # interleaved ratios
    python tools/benchmark.py max-batch --cfg configs/ImageNet/REV_VIT_S.yaml --budget 2GiB  # measured search
    python tools/benchmark.py step --cfg configs/ImageNet/REV_VIT_B.yaml --way reversible --batch-size 4
    python tools/benchmark.py report docs/benchmarks/memory_table.json                      # tables again

--device cuda measures memory with the caching allocator's counters (bytes held by tensors) instead of the
resident set, and time with CUDA events after warm-up; every subcommand honours it. --precision fp32|bf16
and --attention fused|math (math keeps the attention probabilities, like the paper's 2022 measurements)
say how the step computes. See docs/BENCHMARKS.md for the method and the numbers.
"""

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

import torch

from revvit.benchmarks import report
from revvit.benchmarks.depth_sweep import saved_bytes_sweep, sweep_models
from revvit.benchmarks.memory_table import DEFAULT_MODELS, TableSettings, run_memory_table
from revvit.benchmarks.numerics import ATTENTIONS, PRECISIONS
from revvit.benchmarks.search import max_batch
from revvit.benchmarks.settings import PAPER_WAYS, WAYS, StepSpec
from revvit.benchmarks.step import run_isolated
from revvit.benchmarks.timing import interleaved_step_times
from revvit.utils.checkpoint import atomic_write

_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
          "g": 2**30, "gib": 2**30, "gb": 10**9}


def parse_bytes(text):
    """'2147483648', '2GiB', '1.5G', '500MB' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size; use bytes or a unit, e.g. 2GiB, 1500MiB, 3G")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


# What --budget auto leaves to what the counters do not see: the CUDA context, cuBLAS / cuDNN workspaces,
# the caching allocator's fragmentation (on CPU: the interpreter and libraries beside the step).
AUTO_BUDGET_MARGIN = 2**30


def parse_budget(text):
    """A size (parse_bytes), or 'auto': the device's free memory less AUTO_BUDGET_MARGIN (auto_budget)."""
    return "auto" if text.strip().lower() == "auto" else parse_bytes(text)


def auto_budget(device):
    """Bytes one process may fill on ``device``: free GPU memory (torch.cuda.mem_get_info), or on CPU the
    kernel's MemAvailable, less AUTO_BUDGET_MARGIN."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
    else:
        try:
            with open("/proc/meminfo") as f:
                free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        except (OSError, StopIteration):
            free = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return max(0, free - AUTO_BUDGET_MARGIN)


def _at_least(minimum, what):
    """An argparse type: an int of at least ``minimum``."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


positive = _at_least(1, "positive")  # a batch, a count of steps or rounds
non_negative = _at_least(0, "non_negative")  # warm-up steps


def _write_json(path, results):
    """Write atomically (an unpredictable temporary name, then a rename), so that an interrupted run
    leaves the last complete file."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(str(path), lambda f: f.write(json.dumps(results, indent=1).encode()))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=positive, default=None, help="torch threads per measurement (default: torch's)")
    common.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    common.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="fp32 or bf16 autocast")
    common.add_argument("--attention", default="fused", choices=list(ATTENTIONS),
                        help="fused: torch's SDPA kernel choice; math: explicit softmax(QK^T)V (keeps the probabilities)")
    common.add_argument("--ways", nargs="+", default=list(PAPER_WAYS), choices=list(WAYS))
    common.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides for every model")
    common.add_argument("--timeout", type=float, default=None, help="seconds before one measurement is abandoned")
    common.add_argument("--out", default=None, help="write every number here as JSON (rewritten after each point)")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("table", parents=[common], help="memory per image of ViT-S/B/L and MViT-B, the paper's table")
    t.add_argument("--models", nargs="+", default=[m.name for m in DEFAULT_MODELS], choices=[m.name for m in DEFAULT_MODELS])
    t.add_argument("--repeats", type=positive, default=2, help="measure every point this many times (the spread)")
    t.add_argument("--first-repeat", type=non_negative, default=0, help="index of the first repeat (to split repeats over runs)")
    t.add_argument("--budget", type=parse_budget, default=8 * 2**30,
                   help="memory budget of the largest-batch column; auto: the device's free memory less 1 GiB")
    t.add_argument("--batches", nargs=2, type=positive, default=None, metavar=("SMALL", "LARGE"),
                   help="the two batches of every model's slope (default: each model's own, sized for a CPU)")

    s = sub.add_parser("sweep", parents=[common], help="memory per image against depth at one width")
    s.add_argument("--cfg", default="configs/ImageNet/REV_VIT_B.yaml", help="config whose width the sweep keeps")
    s.add_argument("--depths", nargs="+", type=positive, default=[6, 12, 24, 48])
    s.add_argument("--crop", type=positive, default=64, help="image size (64: 16 tokens at patch 16)")
    s.add_argument("--batches", nargs=2, type=positive, default=[4, 12], help="the two batches of the slope")
    s.add_argument("--repeats", type=positive, default=1)
    s.add_argument("--saved-only", action="store_true",
                   help="only the bytes kept for backward after one forward (exact, no training step), in this process")

    m = sub.add_parser("time", parents=[common], help="step-time ratios of the ways, interleaved in one process")
    m.add_argument("--cfg", required=True)
    m.add_argument("--order", nargs="+", default=["reversible", "non_reversible", "act_checkpoint"], choices=list(WAYS),
                   help="the ways, the first being the numerator of every ratio")
    m.add_argument("--batch-size", type=positive, default=4)
    m.add_argument("--rounds", type=positive, default=5)
    m.add_argument("--warmup", type=non_negative, default=1)

    b = sub.add_parser("max-batch", parents=[common], help="largest batch under a budget, by measurement")
    b.add_argument("--cfg", required=True)
    b.add_argument("--budget", type=parse_budget, required=True,
                   help="bytes, model state included (e.g. 8GiB); auto: the device's free memory less 1 GiB")
    b.add_argument("--limit", type=positive, default=4096)

    o = sub.add_parser("step", parents=[common], help="one measured training step (JSON on stdout)")
    o.add_argument("--cfg", required=True)
    o.add_argument("--way", default="reversible", choices=list(WAYS))
    o.add_argument("--batch-size", type=positive, default=2)
    o.add_argument("--steps", type=positive, default=1)
    o.add_argument("--warmup", type=non_negative, default=1)
    o.add_argument("--saved", action="store_true", help="also count the bytes kept for backward")

    r = sub.add_parser("report", help="print the tables of JSON files written by table, sweep or time "
                       "(several table files: their points together, e.g. repeats measured in separate runs)")
    r.add_argument("files", nargs="+")
    args = p.parse_args(argv)
    if getattr(args, "cfg", None) is not None and not Path(args.cfg).is_file():
        p.error(f"--cfg {args.cfg}: no such file (give a YAML config, e.g. configs/ImageNet/REV_VIT_S.yaml)")
    if getattr(args, "batches", None) and args.batches[0] >= args.batches[1]:
        p.error(f"--batches {args.batches[0]} {args.batches[1]}: the slope needs a smaller batch, then a larger one")
    return args


def main(argv=None):
    args = parse_args(argv)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    save = (lambda r: _write_json(args.out, r)) if getattr(args, "out", None) else None
    if getattr(args, "device", "cpu").startswith("cuda") and not torch.cuda.is_available():
        print(f"benchmark {args.command}: --device {args.device} but torch sees no CUDA device here; use --device cpu "
              "or run on a machine with a GPU.", file=sys.stderr)
        return 1
    if getattr(args, "budget", None) == "auto":
        args.budget = auto_budget(args.device)
        log(f"benchmark {args.command}: --budget auto: {args.budget / 2**30:.1f} GiB (free memory of {args.device} less 1 GiB)")
    if args.command == "report":
        missing = [f for f in args.files if not Path(f).is_file()]
        if missing:
            print(f"benchmark report: no such file: {', '.join(missing)} (give JSON files written by --out)", file=sys.stderr)
            return 1
        print(report.render(*(json.loads(Path(path).read_text()) for path in args.files)))
        return 0
    if args.command == "sweep" and args.saved_only:
        rows = saved_bytes_sweep(args.cfg, args.depths, args.crop, args.batches[0], tuple(args.ways), args.opts,
                                 threads=args.threads, log=log, device=args.device, precision=args.precision,
                                 attention=args.attention)
        results = {"kind": "saved-sweep", "config": args.cfg, "crop_size": args.crop, "device": args.device,
                   "precision": args.precision, "attention": args.attention, "rows": rows}
    elif args.command in ("table", "sweep"):
        if args.command == "table":
            models = tuple(next(m for m in DEFAULT_MODELS if m.name == name) for name in args.models)
            if args.batches:
                models = tuple(dataclasses.replace(m, batches=tuple(args.batches)) for m in models)
            extra = dict(budget_bytes=args.budget, first_repeat=args.first_repeat)
        else:
            models = sweep_models(args.cfg, args.depths, args.crop, args.batches)
            extra = dict(saved=True)
        settings = TableSettings(models=models, ways=tuple(args.ways), repeats=args.repeats, threads=args.threads,
                                 device=args.device, timeout=args.timeout, extra_opts=tuple(args.opts),
                                 precision=args.precision, attention=args.attention, **extra)
        results = dict(run_memory_table(settings, log=log, save=save), kind=args.command)
    elif args.command == "time":
        specs = [StepSpec(config=args.cfg, opts=args.opts, way=w, batch_size=args.batch_size, device=args.device,
                          precision=args.precision, attention=args.attention) for w in args.order]
        # One thread on CPU: its CPU time is then the work done (see timing); on CUDA torch's default.
        threads = args.threads or (1 if args.device == "cpu" else None)
        results = dict(interleaved_step_times(specs, rounds=args.rounds, warmup=args.warmup, threads=threads, log=log),
                       kind="time", config=args.cfg)
    elif args.command == "max-batch":
        results = {"kind": "max-batch", "config": args.cfg, "budget_bytes": args.budget, "ways": {}}
        for way in args.ways:
            spec = StepSpec(config=args.cfg, opts=args.opts, way=way, threads=args.threads, device=args.device,
                            precision=args.precision, attention=args.attention)
            best, trials = max_batch(spec, args.budget, limit=args.limit, timeout=args.timeout, log=log)
            results["ways"][way] = {"max_batch": best, "trials": trials}
    else:
        spec = StepSpec(config=args.cfg, opts=args.opts, way=args.way, batch_size=args.batch_size, steps=args.steps,
                        warmup=args.warmup, threads=args.threads, device=args.device, saved=args.saved,
                        precision=args.precision, attention=args.attention)
        results = dict(run_isolated(spec, timeout=args.timeout), kind="step")
    if save:
        save(results)
    print(report.render(results))
    return 1 if "error" in results else 0


if __name__ == "__main__":
    sys.exit(main())
