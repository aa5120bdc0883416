#!/usr/bin/env python3
"""Data-loading speed: decoded Kinetics 16x4 training clips/s and ImageNet training images/s per worker.

    python tools/benchmark_data.py                          # print a markdown report
    python tools/benchmark_data.py --write docs/BENCHMARKS.md   # also (re)write its "## Data loading" section

Media are generated from scikit-learn's sample photographs (no download) into --work-dir; see
revvit/datasets/benchmark.py for what is measured.
"""

import argparse
import os
import platform
import re
import sys
import tempfile
import time

import av
import torch

from revvit.datasets import benchmark as bm

SECTION = "## Data loading"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", default=None, help="where media are generated (default: a temporary directory)")
    p.add_argument("--videos", type=int, default=4, help="320p mp4s of 10 s to generate")
    p.add_argument("--clips", type=int, default=16, help="training items (videos) timed per worker")
    p.add_argument("--images", type=int, default=64, help="training images timed per worker")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="workers of the whole-loader measurement")
    p.add_argument("--no-demo", action="store_true", help="skip timing the demo set builds")
    p.add_argument("--write", default=None, metavar="MD", help="markdown file whose '## Data loading' section is replaced")
    return p.parse_args(argv)


def measure(args, work):
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    r = {"load_before": os.getloadavg()[0]}
    start = time.perf_counter()
    videos = bm.make_benchmark_videos(os.path.join(work, "kinetics"), count=args.videos)
    videos_gop16 = bm.make_benchmark_videos(os.path.join(work, "kinetics_gop16"), count=args.videos, gop=16)
    images = bm.make_benchmark_images(os.path.join(work, "imagenet"), count=args.images)
    print(f"media generated in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    kcfg, icfg = bm.kinetics_recipe_cfg(videos), bm.imagenet_recipe_cfg(images)
    r["kinetics_items"] = bm.item_rate(kcfg, args.clips)
    r["kinetics_clips"] = r["kinetics_items"] * kcfg.AUG.NUM_SAMPLE
    plain = kcfg.clone()
    plain.AUG.ENABLE, plain.AUG.NUM_SAMPLE = False, 1
    r["kinetics_plain"] = bm.item_rate(plain, args.clips)
    torch.set_num_threads(1)
    r["decode"] = bm.decode_rate(videos, args.clips)
    r["decode_gop16"] = bm.decode_rate(videos_gop16, args.clips)
    torch.set_num_threads(threads)
    r["imagenet_images"] = bm.item_rate(icfg, args.images)
    r["kinetics_loader"] = bm.loader_rate(kcfg, args.workers, batch_size=4, batches=max(2, args.clips // 4))
    r["imagenet_loader"] = bm.loader_rate(icfg, args.workers, batch_size=min(16, args.images), batches=max(2, args.images // 16))
    if not args.no_demo:
        for name in ("digits", "moving_digits"):
            r[f"demo_{name}"] = bm.demo_build_seconds(name, tempfile.mkdtemp(prefix="demo-cache-", dir=work))
    r["load_after"] = os.getloadavg()[0]
    return r


def report(r, args):
    cpu = platform.processor() or platform.machine()
    lines = [
        SECTION,
        "",
        "Training-data throughput of one DataLoader worker (one process producing items, as each of",
        "`DATA_LOADER.NUM_WORKERS` does), with the published training recipes, on generated media",
        "(scikit-learn's sample photographs: no download). Multiply by the workers a GPU gets, and compare",
        "with what the model consumes per second.",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, PyAV {av.__version__}, no GPU; "
        f"1-minute load average {r['load_before']:.1f} before and {r['load_after']:.1f} after the run "
        "(other jobs shared the cores: numbers on an idle machine are higher). Reproduce with:",
        "",
        "```bash",
        "python tools/benchmark_data.py --write docs/BENCHMARKS.md",
        "```",
        "",
        "| pipeline | per worker | whole loader |",
        "|---|---|---|",
        f"| Kinetics 16x4 train, 320p H.264 mp4 (10 s, 30 fps): PyAV decode + RandAugment rand-m7-n4 "
        f"+ random-resized-crop 224 + flip + erasing, 2 repeated augmentations + Mixup/CutMix "
        f"| **{r['kinetics_clips']:.1f} clips/s** ({r['kinetics_items']:.1f} videos/s) "
        f"| {r['kinetics_loader']:.1f} clips/s with {args.workers} workers |",
        f"| same videos, decode + crop only (AUG.ENABLE False, 1 clip per video) | {r['kinetics_plain']:.1f} clips/s | |",
        f"| same videos, PyAV decoding of the 16 frames only | {r['decode']:.1f} clips/s | |",
        f"| same content re-encoded with a keyframe every 16 frames (`ffmpeg -g 16`), decoding only "
        f"| {r['decode_gop16']:.1f} clips/s | |",
        f"| ImageNet train, 500x375 JPEG: random-resized-crop 224 (bicubic) + flip + RandAugment "
        f"rand-m7-mstd0.5 + erasing + Mixup/CutMix | **{r['imagenet_images']:.1f} images/s** "
        f"| {r['imagenet_loader']:.1f} images/s with {args.workers} workers |",
        "",
    ]
    if "demo_digits" in r:
        lines += [
            "Building the demo sets on first use (`DATA.DEMO`, from scikit-learn's digits):",
            "",
            "| demo set | contents | build time |",
            "|---|---|---|",
            f"| digits | 1797 JPEGs 32x32, ImageNet layout | {r['demo_digits']:.1f} s |",
            f"| moving_digits | 1400 mp4s 32x32, 20 frames, Kinetics layout | {r['demo_moving_digits']:.1f} s |",
            "",
        ]
    lines += [
        "Decoding dominates a Kinetics clip. A clip is decoded from the keyframe before it to its last frame;",
        "with x264's default interval of 250 frames (most Kinetics downloads) that is often most of the",
        "video, so re-encoding a data set with short keyframe intervals buys decoding speed for file size.",
        "Whole-loader numbers include batching and Mixup in the workers; on a machine with fewer cores than",
        "workers they measure the cores, not the pipeline.",
        "",
    ]
    return "\n".join(lines)


def write_section(path, text):
    """Replace (or append) the '## Data loading' section of ``path``, leaving other sections alone."""
    old = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    with open(path, "w") as f:
        f.write(new)


def main(argv=None):
    args = parse_args(argv)
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
        results = measure(args, args.work_dir)
    else:
        with tempfile.TemporaryDirectory() as work:
            results = measure(args, work)
    text = report(results, args)
    print(text)
    if args.write:
        write_section(args.write, text)


if __name__ == "__main__":
    main()
