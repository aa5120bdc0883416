#!/usr/bin/env python3
"""Data loading against the model: clips (images) per CPU second one worker produces for each published
config, what one single-threaded training process of that config consumes per CPU second, and so the
workers (cores) feeding one training core needs. Side by side in the same run: the worker pipeline
of today (AUG.ON_DEVICE False), the workers under AUG.ON_DEVICE True, the timm / PySlowFast reference
pipeline, and the CPU cost per item of the device half.

    python tools/benchmark_data.py --out docs/benchmarks/data_loading.json

Media are generated from scikit-learn's sample photographs (no download) into --work-dir; see
revvit/benchmarks/data.py for what is measured.
"""

import argparse
import json
import os
import sys
import tempfile

import torch

from revvit.benchmarks import data as bm
from revvit.benchmarks.data import on_device_table
from revvit.benchmarks.report import data_table

IMAGENET = ["configs/ImageNet/REV_VIT_S.yaml", "configs/ImageNet/REV_VIT_B.yaml", "configs/ImageNet/REV_MVIT_B_16_CONV.yaml"]
KINETICS = "configs/Kinetics/REV_MVIT_B_16x4_CONV.yaml"


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


def _side_by_side(config, media, items, device_batch, reference=None):
    """One row of the AUG.ON_DEVICE comparison: today's worker, the ON_DEVICE worker, the reference, the device half."""
    old, new = bm.recipe_cfg(config, media), bm.recipe_cfg(config, media, on_device=True)
    per_item = old.AUG.NUM_SAMPLE if old.TRAIN.DATASET == "kinetics" else 1
    return {
        "config": config,
        "today": bm.item_rate(old, items) * per_item,
        "on_device": bm.item_rate(new, items) * per_item,
        "reference": reference,
        "device_cpu_s": bm.device_cost(new, device_batch),
        "device_batch": device_batch,
    }


def measure(args, work):
    torch.manual_seed(0)
    videos = bm.make_benchmark_videos(os.path.join(work, "kinetics"), count=args.videos, seconds=args.seconds)
    gops = [(videos, "x264 default keyframe interval (250)")]
    if args.short_gop:
        short_gop = bm.make_benchmark_videos(os.path.join(work, "kinetics_gop16"), count=args.videos, seconds=args.seconds, gop=16)
        gops.append((short_gop, "keyframe every 16 frames"))
    images = bm.make_benchmark_images(os.path.join(work, "imagenet"), count=args.images)
    load = [os.getloadavg()[0]]
    rows, side = [], []
    for config in IMAGENET:
        rows.append({"config": config, "pipeline": "train images (500x375 JPEG), the file's recipe",
                     "produces": bm.item_rate(bm.recipe_cfg(config, images), args.images)})
        timm_rate = bm.timm_reference_rate(bm.recipe_cfg(config, images), images, args.images)
        side.append(_side_by_side(config, images, args.images, args.device_batch, ("PIL + timm create_transform", timm_rate)))
    for media, label in gops:
        cfg = bm.recipe_cfg(KINETICS, media)
        rows.append({"config": KINETICS, "pipeline": f"train clips (320p mp4, {label}), the file's recipe",
                     "produces": bm.item_rate(cfg, args.clips) * cfg.AUG.NUM_SAMPLE})
        decode = bm.decode_rate(media, args.clips)
        rows.append({"config": KINETICS, "pipeline": f"PyAV decoding of 16x4 frames only ({label})", "produces": decode})
        row = _side_by_side(KINETICS, media, args.clips, max(1, args.device_batch // 8), (f"PyAV decoding only, {label}", decode))
        side.append(row)
    if args.batch_size:
        consumes = {c: bm.consumption_rate(c, args.batch_size) for c in IMAGENET + [KINETICS]}
        for r in rows:
            r["consumes"] = consumes[r["config"]]
            r["consumer"] = f"(reversible, batch {args.batch_size}, one thread)"
    load.append(os.getloadavg()[0])
    return {"kind": "data", "rows": rows, "on_device": side, "load_average": load, "rates": "per CPU second, one thread"}


def main(argv=None):
    args = parse_args(argv)
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
        results = measure(args, args.work_dir)
    else:
        with tempfile.TemporaryDirectory() as work:
            results = measure(args, work)
    print(data_table(results["rows"]))
    print(on_device_table(results["on_device"]))
    print(f"1-minute load average {results['load_average'][0]:.1f} before, {results['load_average'][1]:.1f} after", file=sys.stderr)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
