#!/usr/bin/env python3
"""Memory and speed of training: reversible vs non-reversible vs activation checkpointing.

    python tools/benchmark.py --out results.json                 # published configs + depth sweep
    python tools/benchmark.py --cfg configs/ImageNet/REV_VIT_B.yaml --batch-size 4 --no-sweep
    python tools/benchmark.py --cfg configs/ImageNet/REV_VIT_B.yaml --no-sweep --no-steps \
        --opts DATA.TRAIN_CROP_SIZE 64 --max-batch 2GiB

See docs/BENCHMARKS.md for what is measured and how to read it.
"""

import argparse
import json
import re
import sys
from pathlib import Path

from revvit.engine.benchmark import PUBLISHED_CONFIGS, WAYS, interleaved_step_times, run_benchmark
from revvit.engine.benchmark_report import config_table, interleaved_table, max_batch_table, plot_sweep, sweep_table

_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
          "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}


def parse_bytes(text):
    """'2147483648', '2GiB', '1.5G', '500MB' -> bytes."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size; use bytes or a unit, e.g. 2GiB, 1500MiB, 3G")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", nargs="+", default=None, help="configs to measure (default: the four published reversible configs)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides applied to every --cfg")
    p.add_argument("--ways", nargs="+", default=list(WAYS), choices=list(WAYS), help="ways of training to compare")
    p.add_argument("--batch-size", type=int, default=2, help="batch of the --cfg measurements")
    p.add_argument("--steps", type=int, default=2, help="timed training steps (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    p.add_argument("--threads", type=int, default=None, help="torch threads in every measurement (default: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--set-to-none", action="store_true",
                   help="free gradients between steps (zero_grad(set_to_none=True), as revvit's trainer) instead of keeping them")
    p.add_argument("--no-steps", action="store_true", help="skip the per-config step measurements")
    p.add_argument("--no-sweep", action="store_true", help="skip the depth sweep")
    p.add_argument("--sweep-cfg", default="configs/ImageNet/REV_VIT_B.yaml", help="config whose width the sweep keeps")
    p.add_argument("--sweep-opts", nargs="+", default=[], metavar="KEY VALUE", help="extra overrides for the sweep")
    p.add_argument("--sweep-depths", nargs="+", type=int, default=[6, 12, 24, 48])
    p.add_argument("--sweep-crop", type=int, default=64, help="image size of the sweep (64: 4x4 = 16 tokens at patch 16)")
    p.add_argument("--sweep-batch", type=int, default=16, help="batch of the sweep's timed steps")
    p.add_argument("--sweep-small-batch", type=int, default=4, help="second batch giving memory per extra sample (0: skip)")
    p.add_argument("--max-batch", type=parse_bytes, default=None, metavar="BYTES",
                   help="also find, per way and --cfg, the largest batch whose step (model included) fits BYTES")
    p.add_argument("--max-batch-limit", type=int, default=4096, help="stop the max-batch search at this batch")
    p.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                   help="also time the ways of each --cfg alternately in one process for ROUNDS rounds "
                        "(one thread; robust step-time ratios on a shared machine)")
    p.add_argument("--in-process", action="store_true",
                   help="measure in this process (quick smoke runs; memory peaks of later measurements can hide in earlier ones)")
    p.add_argument("--timeout", type=float, default=None, help="seconds before one measurement is abandoned")
    p.add_argument("--out", default=None, help="write every number here as JSON")
    p.add_argument("--plot", default=None, help="PNG of the depth sweep (default: next to --out)")
    return p.parse_args(argv)


def _write_json(path, results):
    """Write atomically, so that an interrupted run leaves the last complete file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def main(argv=None):
    args = parse_args(argv)
    configs = [(c, []) for c in args.cfg] if args.cfg else PUBLISHED_CONFIGS
    settings = {
        "configs": [] if args.no_steps else configs,
        "max_batch_configs": configs,
        "opts": args.opts,
        "ways": args.ways,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "device": args.device,
        "sweep": not args.no_sweep,
        "sweep_config": args.sweep_cfg,
        "sweep_opts": args.sweep_opts,
        "sweep_depths": args.sweep_depths,
        "sweep_crop": args.sweep_crop,
        "sweep_batch": args.sweep_batch,
        "sweep_small_batch": args.sweep_small_batch,
        "max_batch_bytes": args.max_batch,
        "max_batch_limit": args.max_batch_limit,
        "timeout": args.timeout,
        "set_to_none": args.set_to_none,
        "isolated": not args.in_process,
    }
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    save = (lambda partial: _write_json(args.out, partial)) if args.out else None
    results = run_benchmark(settings, log=log, save=save)
    if args.interleaved:
        results["interleaved"] = []
        for path, extra in configs:
            specs = [dict(config=path, opts=list(extra) + args.opts, way=w, batch_size=args.batch_size) for w in args.ways]
            log(f"[interleaved] {path}: {', '.join(args.ways)} x {args.interleaved} rounds")
            results["interleaved"].append(interleaved_step_times(specs, rounds=args.interleaved, warmup=args.warmup, log=log))

    if results.get("configs"):
        print("\n## Training step per config\n\n" + config_table(results["configs"]))
    if "depth_sweep" in results:
        sweep = results["depth_sweep"]
        print("\n## Depth sweep\n\n" + sweep_table(sweep["results"]))
        print(json.dumps({"ratios": sweep["ratios"], "targets": sweep["targets"]}, indent=2))
        plot = args.plot or (str(Path(args.out).with_suffix(".png")) if args.out else None)
        if plot:
            Path(plot).parent.mkdir(parents=True, exist_ok=True)
            sweep["plot"] = plot_sweep(sweep["results"], plot, title=f"{Path(sweep['config']).stem} width, {sweep['crop_size']}px input")
    for entry in results.get("interleaved", []):
        print("\n## Interleaved step times\n\n" + interleaved_table(entry))
    if "max_batch" in results:
        print("\n## Maximum batch\n\n" + max_batch_table(results["max_batch"]))
    if args.out:
        _write_json(args.out, results)
        print(f"\nresults written to {args.out}", file=sys.stderr)
    failed = [r for part in ("configs",) for r in results.get(part, []) if "error" in r]
    failed += [r for r in results.get("depth_sweep", {}).get("results", []) if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
