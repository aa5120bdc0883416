#!/usr/bin/env python3
"""Data loading against the model: clips (images) per CPU second one worker produces for each published
config, what one single-threaded training process of that config consumes per CPU second, and so the
workers (cores) feeding one training core needs. Side by side in the same run: the worker pipeline
with the whole recipe (AUG.ON_DEVICE False), the workers under AUG.ON_DEVICE True, the timm / PySlowFast
reference pipeline, and the CPU cost per item of the device half.

    python tools/benchmark_data.py --out docs/benchmarks/data_loading.json

Media are generated from scikit-learn's sample photographs (no download) into --work-dir; see
revvit/benchmarks/data.py for what is measured.
"""

import argparse
import json
import os
import sys
import tempfile

from revvit.benchmarks.data import measure, on_device_table
from revvit.benchmarks.report import data_table


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=None, help="where media are generated (default: a temporary directory)")
    p.add_argument("--videos", type=int, default=4, help="320p mp4s to generate")
    p.add_argument("--seconds", type=int, default=10, help="length of each video")
    p.add_argument("--clips", type=int, default=16, help="training items (videos) timed per worker")
    p.add_argument("--images", type=int, default=64, help="training images timed per worker")
    p.add_argument("--batch-size", type=int, default=2, help="batch of the consumption step (0: skip it)")
    p.add_argument("--device-batch", type=int, default=32, help="images per batch of the device half (clips: a quarter)")
    p.add_argument("--short-gop", action=argparse.BooleanOptionalAction, default=True, help="also time videos with a keyframe every 16 frames")
    p.add_argument("--out", default=None, help="write the numbers here as JSON")
    args = p.parse_args(argv)
    if args.seconds * 30 < (16 - 1) * 4 + 1:  # the 30 fps videos must hold one 16x4 Kinetics clip
        p.error(f"--seconds {args.seconds} makes videos shorter than one 16x4 clip (61 frames at 30 fps); use --seconds 3 or more")
    return args


def main(argv=None):
    args = parse_args(argv)
    sizes = dict(videos=args.videos, seconds=args.seconds, clips=args.clips, images=args.images,
                 batch_size=args.batch_size, device_batch=args.device_batch, short_gop=args.short_gop)
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
        results = measure(args.work_dir, **sizes)
    else:
        with tempfile.TemporaryDirectory() as work:
            results = measure(work, **sizes)
    print(data_table(results["rows"]))
    print(on_device_table(results["on_device"]))
    print(f"1-minute load average {results['load_average'][0]:.1f} before, {results['load_average'][1]:.1f} after", file=sys.stderr)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
