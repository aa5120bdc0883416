"""Demo data sets, built on first use from the handwritten digits shipped inside scikit-learn.

They let anyone run the whole pipeline on a laptop CPU, offline, through the same ``imagenet`` and
``kinetics`` data set classes as real data (``DATA.DEMO`` only changes where those read):

- ``digits``: the 1797 8x8 digits of ``sklearn.datasets.load_digits``, upscaled to 32x32 RGB JPEGs
  in the ImageNet layout ``{train,val,test}/<digit>/<n>.jpg`` (60/20/20 split per class).
- ``moving_digits``: 32x32 H.264 mp4s of 20 frames at 30 fps in the Kinetics layout
  (``{train,val,test}.csv`` + ``videos/``), where a digit glides across a noisy background. The class
  is the direction of motion (right, left, down, up), which no single frame shows: a model must
  look across time. Digits of each split come from disjoint halves of scikit-learn's set.

A set is built into a temporary directory next to its final place and renamed into place when
complete, so an interrupted build leaves nothing half-made and processes that race to build it
(one per GPU) all end up reading one complete copy.
"""

import json
import logging
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image

from .errors import DataLayoutError
from .video_writer import write_video

__all__ = ["DEMO_SETS", "build_digits", "build_moving_digits", "demo_data_dir", "DIRECTIONS"]

logger = logging.getLogger(__name__)

DIRECTIONS = ("right", "left", "down", "up")
_MOVES = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}  # (dy, dx)
_SPLIT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
_MANIFEST = "manifest.json"


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 in the package
    return images, digits.target.astype(np.int64)


def _split_indices(targets, seed):
    """Per-class 60/20/20 split of sample indices, fixed by ``seed``."""
    rng = np.random.RandomState(seed)
    out = {split: [] for split in _SPLIT_FRACTIONS}
    for c in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == c))
        n_train = int(round(len(members) * _SPLIT_FRACTIONS["train"]))
        n_val = int(round(len(members) * _SPLIT_FRACTIONS["val"]))
        out["train"].extend(members[:n_train])
        out["val"].extend(members[n_train : n_train + n_val])
        out["test"].extend(members[n_train + n_val :])
    return {split: np.array(sorted(idx)) for split, idx in out.items()}


def _upscale(image, size):
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def build_digits(root, size=32, seed=0):
    """The ``digits`` image set under ``root``; returns the number of images per split."""
    images, targets = _digits()
    counts = {}
    for split, indices in _split_indices(targets, seed).items():
        for i in indices:
            folder = os.path.join(root, split, str(targets[i]))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(_upscale(images[i], size)).convert("RGB").save(os.path.join(folder, f"{i:04d}.jpg"), quality=95)
        counts[split] = len(indices)
    return {"classes": [str(c) for c in range(10)], "images": counts}


def moving_digit_frames(digit, direction, rng, frames=20, size=32, digit_size=12):
    """uint8 ``[frames, size, size, 3]``: ``digit`` (8x8 uint8) gliding in ``direction`` over noise."""
    glyph = _upscale(digit, digit_size).astype(np.float32) / 255.0
    color = rng.uniform(0.5, 1.0, size=3).astype(np.float32)
    background = rng.uniform(0.0, 0.25, size=(size, size, 3)).astype(np.float32)
    room = size - digit_size
    speed = rng.uniform(0.6, 1.0) * room / (frames - 1)
    travel = speed * (frames - 1)
    along = rng.uniform(0, room - travel)  # start so that the whole path stays inside the frame
    across = rng.uniform(0, room)
    dy, dx = _MOVES[direction]
    video = np.empty((frames, size, size, 3), np.float32)
    for t in range(frames):
        pos = along + speed * t
        if dy:
            y, x = (pos if dy > 0 else room - pos), across
        else:
            y, x = across, (pos if dx > 0 else room - pos)
        y, x = int(round(y)), int(round(x))
        frame = background + rng.normal(0.0, 0.03, size=background.shape).astype(np.float32)
        patch = frame[y : y + digit_size, x : x + digit_size]
        patch[:] = np.maximum(patch, glyph[..., None] * color)
        video[t] = frame
    return (np.clip(video, 0.0, 1.0) * 255).round().astype(np.uint8)


def build_moving_digits(root, videos_per_split=None, frames=20, size=32, fps=30, seed=0):
    """The ``moving_digits`` video set under ``root``; returns the number of videos per split."""
    videos_per_split = videos_per_split or {"train": 1000, "val": 200, "test": 200}
    images, targets = _digits()
    splits = _split_indices(targets, seed)
    rng = np.random.RandomState(seed + 1)
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    for split, count in videos_per_split.items():
        lines = []
        for n in range(count):
            label = n % len(DIRECTIONS)  # balanced classes
            digit = images[rng.choice(splits[split])]
            relative = f"videos/{split}_{n:05d}.mp4"
            write_video(os.path.join(root, relative), moving_digit_frames(digit, DIRECTIONS[label], rng, frames, size), fps=fps)
            lines.append(f"{relative} {label}\n")
        with open(os.path.join(root, f"{split}.csv"), "w") as f:
            f.writelines(lines)
    with open(os.path.join(root, "classes.txt"), "w") as f:  # label names for the kinetics data set
        f.writelines(f"{d}\n" for d in DIRECTIONS)
    return {"classes": list(DIRECTIONS), "videos": dict(videos_per_split), "frames": frames, "fps": fps}


# name -> (data set that reads it, builder, version). Bump the version when a builder changes, so
# caches from an older revvit are rebuilt rather than silently reused.
DEMO_SETS = {
    "digits": ("imagenet", build_digits, 1),
    "moving_digits": ("kinetics", build_moving_digits, 2),  # 2: classes.txt
}


def _complete(path):
    return os.path.isfile(os.path.join(path, _MANIFEST))


def demo_data_dir(name, cache_dir="~/.cache/revvit", dataset_name=None):
    """Directory of demo set ``name`` under ``cache_dir``, built there first if it is not yet."""
    if name not in DEMO_SETS:
        raise DataLayoutError(f"DATA.DEMO '{name}' is not a demo set; choose one of {sorted(DEMO_SETS)} (or '' for real data).")
    reader, builder, version = DEMO_SETS[name]
    if dataset_name is not None and dataset_name != reader:
        raise DataLayoutError(
            f"DATA.DEMO '{name}' is read by the '{reader}' data set, but TRAIN.DATASET / TEST.DATASET is '{dataset_name}'."
        )
    parent = os.path.join(os.path.expanduser(cache_dir), "demo")
    final = os.path.join(parent, f"{name}-v{version}")
    if _complete(final):
        return final
    if os.path.exists(final):
        raise RuntimeError(f"{final} exists but is not a complete demo set (no {_MANIFEST}); delete it to rebuild.")
    os.makedirs(parent, exist_ok=True)
    logger.info("Building demo set '%s' in %s (first use only)", name, final)
    start = time.time()
    tmp = tempfile.mkdtemp(prefix=f".{name}-v{version}.tmp-", dir=parent)
    try:
        info = builder(tmp)
        info.update(name=name, version=version, reader=reader, build_seconds=round(time.time() - start, 2))
        with open(os.path.join(tmp, _MANIFEST), "w") as f:
            json.dump(info, f, indent=1)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final):  # not a lost race: a real error
                raise
            logger.info("Another process built %s first; using its copy", final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("Demo set '%s' ready in %.1f s", name, time.time() - start)
    return final
