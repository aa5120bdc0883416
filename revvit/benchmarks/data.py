"""How fast the data pipelines feed a model: training clips (images) per second one worker produces.

Media are made here from the two photographs scikit-learn ships (``load_sample_images``), so the
numbers need no download: 320p H.264 mp4s (the Kinetics "320p" short side, 16:9) that pan and zoom
across a photograph for 10 s at 30 fps, and 500x375 JPEGs (the typical ImageNet size) cut from them.
The recipes are read from the shipped config files (``recipe_cfg``), so they are the ones training uses.

A worker is one process producing items (``DATA_LOADER.NUM_WORKERS`` of them run in parallel), so
"per worker" is measured in this process with one thread, item after item, which is exactly what one
worker does. Rates are per CPU second (``time.process_time``): what a worker produces on a core of its
own, independent of other jobs sharing the machine (reading files from a warm page cache, as here,
costs little wall time beyond it). Dividing what one training process consumes by it gives the
workers that process needs.

``AUG.ON_DEVICE`` moves RandAugment, erasing, normalisation and mixing from the workers to the
training device. Its two halves are measured apart: what one worker then produces (``item_rate``
with the key on) and the CPU time the device half costs per batch in the training process
(``device_cost``; on a GPU it is a side stream's work overlapped with the step).
"""

import os
import time

import numpy as np
import torch
from PIL import Image

from revvit.config import get_cfg, merge_file
from revvit.datasets.build import build_dataset
from revvit.datasets.video_writer import write_video

from .step import resolve_config

__all__ = [
    "decode_rate",
    "device_cost",
    "item_rate",
    "make_benchmark_images",
    "make_benchmark_videos",
    "measure",
    "on_device_table",
    "recipe_cfg",
    "timm_reference_rate",
]


def _photos():
    from sklearn.datasets import load_sample_images

    return [np.asarray(im) for im in load_sample_images().images]  # 427 x 640 RGB each


def make_benchmark_videos(root, count=4, seconds=10, fps=30, size=(320, 568), gop=None):
    """``count`` mp4s in the Kinetics layout under ``root`` (train.csv lists them repeatedly); returns ``root``.

    ``gop`` None keeps x264's default keyframe interval (250 frames), as most Kinetics downloads have.
    """
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    height, width = size
    lines = []
    for n, photo in enumerate(_photos() * ((count + 1) // 2)):
        if n == count:
            break
        frames = np.empty((seconds * fps, height, width, 3), np.uint8)
        ph, pw = photo.shape[:2]
        for t in range(len(frames)):
            # A slow zoom and pan: every frame differs, as in real footage.
            phase = t / len(frames)
            scale = 0.9 - 0.3 * phase
            ch, cw = int(ph * scale), int(pw * scale)
            top = int((ph - ch) * (0.5 + 0.4 * np.sin(2 * np.pi * phase)))
            left = int((pw - cw) * phase)
            crop = Image.fromarray(photo[top : top + ch, left : left + cw]).resize((width, height), Image.BILINEAR)
            frames[t] = np.asarray(crop)
        name = f"videos/clip{n}.mp4"
        write_video(os.path.join(root, name), frames, fps=fps, crf=23, preset="medium", gop=gop)
        lines.append(f"{name} {n % 2}\n")
    with open(os.path.join(root, "train.csv"), "w") as f:
        f.writelines(lines * max(1, 64 // len(lines)))  # enough rows for several loader batches
    return root


def make_benchmark_images(root, count=64, size=(375, 500)):
    """``count`` JPEGs in the ImageNet layout under ``root``/train (two classes); returns ``root``."""
    rng = np.random.RandomState(0)
    height, width = size
    for n in range(count):
        photo = _photos()[n % 2]
        scale = rng.uniform(0.6, 1.0)
        ch, cw = int(photo.shape[0] * scale), int(photo.shape[1] * scale)
        top, left = rng.randint(0, photo.shape[0] - ch + 1), rng.randint(0, photo.shape[1] - cw + 1)
        folder = os.path.join(root, "train", f"class{n % 2}")
        os.makedirs(folder, exist_ok=True)
        image = Image.fromarray(photo[top : top + ch, left : left + cw]).resize((width, height), Image.BICUBIC)
        image.save(os.path.join(folder, f"{n:04d}.jpg"), quality=90)
    return root


def recipe_cfg(config, data_dir, on_device=False):
    """The training data recipe of a shipped config file (e.g. configs/Kinetics/REV_MVIT_B_16x4_CONV.yaml)
    read over generated media in ``data_dir``: the file's own augmentation, sampling and decoding,
    with AUG.ON_DEVICE ``on_device``."""
    cfg = get_cfg()
    merge_file(cfg, resolve_config(config))
    cfg.DATA.PATH_TO_DATA_DIR = str(data_dir)
    cfg.NUM_GPUS = 0
    cfg.AUG.ON_DEVICE = on_device
    return cfg


def _one_thread(fn):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # DataLoader workers run with one intra-op thread
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def timm_reference_rate(cfg, data_dir, items, warmup=2):
    """Images per CPU second of the reference pipeline PySlowFast and timm run in a worker: PIL decoding
    and timm's ``create_transform`` with the same recipe, outside any data set class."""
    from revvit.datasets.imagenet import build_image_transform, read_image

    root = os.path.join(data_dir, "train")
    paths = sorted(os.path.join(root, c, f) for c in sorted(os.listdir(root)) for f in sorted(os.listdir(os.path.join(root, c))))
    transform = build_image_transform(cfg, train=True)

    def run():
        for i in range(warmup):
            transform(read_image(paths[i % len(paths)]))
        start = time.process_time()
        for i in range(items):
            transform(read_image(paths[(i + warmup) % len(paths)]))
        return items / (time.process_time() - start)

    return _one_thread(run)


def device_cost(cfg, batch_size, batches=3, threads=1, device="cpu"):
    """Seconds per training item of the AUG.ON_DEVICE half (RandAugment, normalisation, erasing,
    mixing) over a batch of ``batch_size`` uint8 crops already on ``device``: CPU seconds with
    ``threads`` threads on the CPU; on CUDA wall seconds between synchronisations (the GPU's time)."""
    from revvit.datasets.device.device_augment import DeviceAugment, batch_seed, seeded

    device = torch.device(device)
    cuda = device.type == "cuda"
    augment = DeviceAugment(cfg, device)
    size = cfg.DATA.TRAIN_CROP_SIZE
    shape = (batch_size, 3, size, size) if cfg.TRAIN.DATASET == "imagenet" else (batch_size, 3, cfg.DATA.NUM_FRAMES, size, size)
    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(device)
    labels = (torch.arange(batch_size) % cfg.MODEL.NUM_CLASSES).to(device)
    clock = time.perf_counter if cuda else time.process_time
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with seeded(batch_seed(cfg, 0, 0, 0), device):
            augment(x, labels)  # warm-up
        if cuda:
            torch.cuda.synchronize(device)
        start = clock()
        for step in range(batches):
            with seeded(batch_seed(cfg, 0, 0, step + 1), device):
                augment(x, labels)
        if cuda:
            torch.cuda.synchronize(device)
        return (clock() - start) / (batches * batch_size)
    finally:
        torch.set_num_threads(previous)


def item_rate(cfg, items, warmup=2):
    """Training items per CPU second produced by one worker: this process, with one thread as a worker has."""
    dataset = build_dataset(cfg.TRAIN.DATASET, cfg, "train")

    def run():
        for i in range(warmup):
            dataset[i % len(dataset)]
        start = time.process_time()
        for i in range(items):
            dataset[(i + warmup) % len(dataset)]
        return items / (time.process_time() - start)

    return _one_thread(run)


def decode_rate(data_dir, clips, num_frames=16, sampling_rate=4, target_fps=30):
    """Clips per CPU second of PyAV decoding alone (random 16x4 clips of the videos under ``data_dir``)."""
    from revvit.datasets.decoder import decode_clip

    videos = sorted(os.path.join(data_dir, "videos", n) for n in os.listdir(os.path.join(data_dir, "videos")))
    decode_clip(videos[0], num_frames, sampling_rate, target_fps)
    start = time.process_time()
    for i in range(clips):
        decode_clip(videos[i % len(videos)], num_frames, sampling_rate, target_fps, start_fraction=(i * 0.37) % 1.0)
    return clips / (time.process_time() - start)


def consumption_rate(config, batch_size=2):
    """Training images (clips) per CPU second that one single-threaded training process of ``config``
    (reversible) consumes: batch / the CPU time of one training step after one warm-up step."""
    from .settings import StepSpec
    from .step import measure

    r = measure(StepSpec(config=config, way="reversible", batch_size=batch_size, steps=1, warmup=1, threads=1))
    return batch_size / r["step_cpu_time_s"]


IMAGENET = ["configs/ImageNet/REV_VIT_S.yaml", "configs/ImageNet/REV_VIT_B.yaml", "configs/ImageNet/REV_MVIT_B_16_CONV.yaml"]
KINETICS = "configs/Kinetics/REV_MVIT_B_16x4_CONV.yaml"


def _side_by_side(config, media, items, device_batch, reference=None):
    """One row of the AUG.ON_DEVICE comparison: the whole recipe in the worker (AUG.ON_DEVICE False),
    the AUG.ON_DEVICE True worker, the reference, the device half."""
    in_workers, on_device = recipe_cfg(config, media), recipe_cfg(config, media, on_device=True)
    per_item = in_workers.AUG.NUM_SAMPLE if in_workers.TRAIN.DATASET == "kinetics" else 1
    return {
        "config": config,
        "in_workers": item_rate(in_workers, items) * per_item,
        "on_device": item_rate(on_device, items) * per_item,
        "reference": reference,
        "device_cpu_s": device_cost(on_device, device_batch),
        "device_batch": device_batch,
    }


def measure(work, videos=4, seconds=10, clips=16, images=64, batch_size=2, device_batch=32, short_gop=True):
    """Every rate of the data benchmark, on media generated under ``work``: ``{"rows": production (and
    consumption) per config and pipeline, "on_device": the AUG.ON_DEVICE comparison, "load_average":
    before and after}``. ``batch_size`` 0 skips the consumption step; ``short_gop`` also times videos
    with a keyframe every 16 frames."""
    torch.manual_seed(0)
    video_dir = make_benchmark_videos(os.path.join(work, "kinetics"), count=videos, seconds=seconds)
    gops = [(video_dir, "x264 default keyframe interval (250)")]
    if short_gop:
        short = make_benchmark_videos(os.path.join(work, "kinetics_gop16"), count=videos, seconds=seconds, gop=16)
        gops.append((short, "keyframe every 16 frames"))
    image_dir = make_benchmark_images(os.path.join(work, "imagenet"), count=images)
    load = [os.getloadavg()[0]]
    rows, side = [], []
    for config in IMAGENET:
        rows.append({"config": config, "pipeline": "train images (500x375 JPEG), the file's recipe",
                     "produces": item_rate(recipe_cfg(config, image_dir), images)})
        timm_rate = timm_reference_rate(recipe_cfg(config, image_dir), image_dir, images)
        side.append(_side_by_side(config, image_dir, images, device_batch, ("PIL + timm create_transform", timm_rate)))
    for media, label in gops:
        cfg = recipe_cfg(KINETICS, media)
        rows.append({"config": KINETICS, "pipeline": f"train clips (320p mp4, {label}), the file's recipe",
                     "produces": item_rate(cfg, clips) * cfg.AUG.NUM_SAMPLE})
        decode = decode_rate(media, clips)
        rows.append({"config": KINETICS, "pipeline": f"PyAV decoding of 16x4 frames only ({label})", "produces": decode})
        side.append(_side_by_side(KINETICS, media, clips, max(1, device_batch // 8), (f"PyAV decoding only, {label}", decode)))
    if batch_size:
        consumes = {c: consumption_rate(c, batch_size) for c in IMAGENET + [KINETICS]}
        for r in rows:
            r["consumes"] = consumes[r["config"]]
            r["consumer"] = f"(reversible, batch {batch_size}, one thread)"
    load.append(os.getloadavg()[0])
    return {"kind": "data", "rows": rows, "on_device": side, "load_average": load, "rates": "per CPU second, one thread"}


def on_device_table(rows):
    """Markdown: per config, one worker's rate with AUG.ON_DEVICE False and True, the reference
    pipeline's, and the device half's CPU cost."""
    head = (
        "| config | one worker, AUG.ON_DEVICE False (/ CPU s) | one worker, AUG.ON_DEVICE True (/ CPU s) | gain | reference (/ CPU s) "
        "| device half on this CPU, one thread (ms / item) |\n|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        name, rate = r["reference"] or ("-", None)
        ref = f"{rate:.1f} ({name})" if rate else "-"
        lines.append(
            f"| {r['config']} | {r['in_workers']:.1f} | {r['on_device']:.1f} | {r['on_device'] / r['in_workers']:.2f}x | {ref} "
            f"| {1000 * r['device_cpu_s']:.1f} (batch {r['device_batch']}) |\n"
        )
    return head + "".join(lines)
