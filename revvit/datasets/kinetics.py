"""Kinetics (and any video set in its layout): CSV lists of videos, training clips, test views.

Layout of ``DATA.PATH_TO_DATA_DIR``::

    train.csv  val.csv  test.csv      one "<video path><DATA.PATH_LABEL_SEPARATOR><label>" per line
    [classes.txt]                     optional: the name of label i on line i (saved in checkpoints)

Each line is split at its LAST separator, so paths may contain spaces. A path is joined to
``DATA.PATH_PREFIX`` when that is set; otherwise a relative path is taken relative to the data
directory (PySlowFast takes it relative to the working directory, which breaks as soon as a run
starts elsewhere). Lines that cannot be parsed, or whose label is not an integer in
[0, MODEL.NUM_CLASSES), are logged with their line number, skipped, and kept in ``bad_rows``.

Splits:

- train with ``AUG.ON_DEVICE``: decode and the geometric crop and flip only, uint8 out; RandAugment
  (one draw per clip, on the crop rather than the full frames: its translations are relative to
  the frame and its rotations about the centre, so the draws mean the same), normalisation and
  erasing run on the device (device_augment.py).
- train: one random clip per video, augmented ``AUG.NUM_SAMPLE`` times (repeated augmentation:
  the video is decoded once), with random-resized-crop (``TRAIN_JITTER_SCALES_RELATIVE`` /
  ``TRAIN_JITTER_ASPECT_RELATIVE``) or short-side scale jitter (``TRAIN_JITTER_SCALES``) and random
  crop, flip, and with ``AUG.ENABLE`` RandAugment (same operations on all frames) and random erasing.
- val: one clip from the middle of each video, short side resized to ``TRAIN_JITTER_SCALES[0]``,
  centre crop. (PySlowFast jitters val clips like training ones; a fixed view makes the val curve
  comparable from epoch to epoch.)
- test: ``TEST.NUM_ENSEMBLE_VIEWS`` uniformly spaced clips x ``TEST.NUM_SPATIAL_CROPS`` crops per
  video (1: centre crop after resizing the short side to ``TRAIN_JITTER_SCALES[0]``; 3: left /
  centre / right after resizing it to ``TEST_CROP_SIZE``). Item ``i`` is view ``i % views`` of
  video ``i // views``, and carries the video index for ensembling.

Items are ``(clip [3, T, H, W] float, label, video index, meta)``; with ``AUG.NUM_SAMPLE > 1`` in
training the clip is a list of that many clips, which the loader's collate flattens into the batch.
"""

import logging
import os

import torch
from iopath.common.file_io import g_pathmgr
from timm.data.random_erasing import RandomErasing

from revvit.config.options import DECODING_BACKENDS

from . import video_transforms as vt
from .bad_samples import fetch_with_retries
from .build import DATASET_REGISTRY
from .channels import model_channels
from .decoder import decode_clip, eval_view_start
from .device.device_augment import augment_on_device
from .errors import DataLayoutError
from revvit.utils.seeding import keyed_items
from .timm_compat import crop_range

__all__ = ["Kinetics", "read_class_names", "read_video_list"]

logger = logging.getLogger(__name__)

_LAYOUT = (
    "Expected DATA.PATH_TO_DATA_DIR to hold train.csv, val.csv and test.csv, each with one "
    "'<video path><DATA.PATH_LABEL_SEPARATOR><integer label>' per line."
)


def read_video_list(csv_path, separator, prefix, data_dir, num_classes):
    """``(paths, labels, bad_rows)`` of one split file; ``bad_rows`` holds ``(line number, text, reason)``."""
    if not g_pathmgr.isfile(csv_path):
        raise DataLayoutError(f"Kinetics split file not found: {csv_path}. {_LAYOUT}")
    paths, labels, bad_rows = [], [], []
    with g_pathmgr.open(csv_path, "r") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            path, sep, label = text.rpartition(separator)
            if not sep or not path.strip():
                bad_rows.append((number, text, f"no '{separator}' between path and label"))
                continue
            try:
                label = int(label)
            except ValueError:
                bad_rows.append((number, text, f"label '{label}' is not an integer"))
                continue
            if not 0 <= label < num_classes:
                bad_rows.append((number, text, f"label {label} outside [0, {num_classes}) (MODEL.NUM_CLASSES)"))
                continue
            path = path.strip()
            paths.append(os.path.join(prefix, path) if prefix else os.path.join(data_dir, path))
            labels.append(label)
    for number, text, reason in bad_rows[:10]:
        logger.warning("%s line %d skipped: %s: %r", csv_path, number, reason, text)
    if len(bad_rows) > 10:
        logger.warning("%s: %d more bad lines skipped", csv_path, len(bad_rows) - 10)
    if not paths:
        if not bad_rows:
            raise DataLayoutError(f"{csv_path} is empty: the split has no video. {_LAYOUT}")
        number, text, reason = bad_rows[0]
        raise DataLayoutError(
            f"No usable line in {csv_path} ({len(bad_rows)} bad lines; line {number} {text[:80]!r}: {reason}). "
            f"{_LAYOUT} A header line or another separator (set DATA.PATH_LABEL_SEPARATOR, now "
            f"{separator!r}) makes every line bad."
        )
    return paths, labels, bad_rows


def _data_dir_exists(data_dir):
    if not g_pathmgr.isdir(data_dir):
        raise DataLayoutError(
            f"Kinetics data directory not found: {data_dir} (DATA.PATH_TO_DATA_DIR). {_LAYOUT} "
            "Set DATA.PATH_TO_DATA_DIR to that folder."
        )


def read_class_names(path):
    """Label names, one per line (line i names label i), or None when the optional file is absent."""
    if not g_pathmgr.isfile(path):
        return None
    with g_pathmgr.open(path, "r") as f:
        return [line.strip() for line in f if line.strip()]


@DATASET_REGISTRY.register()
class Kinetics(torch.utils.data.Dataset):
    @staticmethod
    def check_layout(cfg, split, data_dir):
        """The data directory and ``<split>.csv`` exist and the CSV has at least one usable line."""
        _data_dir_exists(data_dir)
        data = cfg.DATA
        read_video_list(
            os.path.join(data_dir, f"{split}.csv"), data.PATH_LABEL_SEPARATOR, data.PATH_PREFIX, data_dir, cfg.MODEL.NUM_CLASSES
        )

    def __init__(self, cfg, split, data_dir, videos=None):
        """``videos``: paths to read instead of ``<split>.csv``, unlabelled (their label is 0): what
        prediction gives, with the split's views and crops."""
        data = cfg.DATA
        if data.DECODING_BACKEND != DECODING_BACKENDS[data.DECODING_BACKEND]:
            logger.info(
                "DATA.DECODING_BACKEND %s: torchvision no longer decodes video; decoding with PyAV.", data.DECODING_BACKEND
            )
        self.cfg = cfg
        self.split = split
        self.data_dir = data_dir
        if videos is None:
            _data_dir_exists(data_dir)
            source = os.path.join(data_dir, f"{split}.csv")
            self._paths, self._labels, self.bad_rows = read_video_list(
                source, data.PATH_LABEL_SEPARATOR, data.PATH_PREFIX, data_dir, cfg.MODEL.NUM_CLASSES
            )
            self.classes = read_class_names(os.path.join(data_dir, "classes.txt"))
        else:
            source = "the given paths"
            self._paths, self._labels, self.bad_rows = [os.path.abspath(v) for v in videos], [0] * len(videos), []
            self.classes = None
        self._num_views = cfg.TEST.NUM_ENSEMBLE_VIEWS * cfg.TEST.NUM_SPATIAL_CROPS if split == "test" else 1
        self._num_samples = cfg.AUG.NUM_SAMPLE if split == "train" else 1
        # AUG.ON_DEVICE: training clips leave the worker as uint8 crops (device_augment.py does the rest).
        self._uint8 = split == "train" and augment_on_device(cfg)
        augment = split == "train" and cfg.AUG.ENABLE and not self._uint8
        self._rand_augment = (
            vt.ClipRandAugment(cfg.AUG.AA_TYPE, cfg.AUG.INTERPOLATION, data.MEAN) if augment and cfg.AUG.AA_TYPE else None
        )
        self._erase = (
            RandomErasing(cfg.AUG.RE_PROB, mode=cfg.AUG.RE_MODE, max_count=cfg.AUG.RE_COUNT, device="cpu")
            if augment and cfg.AUG.RE_PROB > 0
            else None
        )
        logger.info(
            "Kinetics %s: %d videos x %d view(s) from %s (%d bad lines)",
            split, len(self._paths), self._num_views, source, len(self.bad_rows),
        )

    @property
    def num_videos(self):
        return len(self._paths)

    def __len__(self):
        return len(self._paths) * self._num_views

    def video_path(self, video):
        return self._paths[video]

    def label(self, video):
        return self._labels[video]

    def view_of(self, index):
        """``(video, temporal view, spatial view)`` of item ``index``."""
        video, view = divmod(index, self._num_views)
        if self.split != "test":
            return video, 0, 1
        temporal, spatial = divmod(view, self.cfg.TEST.NUM_SPATIAL_CROPS)
        return video, temporal, spatial if self.cfg.TEST.NUM_SPATIAL_CROPS > 1 else 1

    @keyed_items  # a training key (epoch, index): the draws are seeded from it
    def __getitem__(self, index):
        video, temporal, spatial = self.view_of(index)
        if self.split == "train":
            start = None
        elif self.split == "val":
            start = 0.5
        else:
            start = eval_view_start(temporal, self.cfg.TEST.NUM_ENSEMBLE_VIEWS, self.cfg.DATA.USE_OFFSET_SAMPLING)

        def load(v):
            return self._load(v, start, spatial), v

        item, skipped = fetch_with_retries(
            load, video, len(self._paths), substitute=self.split == "train", num_retries=self.cfg.DATA_LOADER.NUM_RETRIES
        )
        meta = {
            "skipped": len(skipped),
            "skipped_paths": skipped,
            "valid": item is not None,
            "temporal_view": temporal,
            "spatial_view": spatial,
            "view": index % self._num_views,
        }
        if item is None:
            size, frames = self.cfg.DATA.TEST_CROP_SIZE, self.cfg.DATA.NUM_FRAMES
            return torch.zeros(3, frames, size, size), self._labels[video], video, meta
        clips, video = item
        return clips, self._labels[video], video, meta

    def _load(self, video, start, spatial):
        data = self.cfg.DATA
        frames, _ = decode_clip(
            self._paths[video],
            data.NUM_FRAMES,
            data.SAMPLING_RATE,
            data.TARGET_FPS,
            start_fraction=start,
            allow_short=self.split != "train",
            threads=self.cfg.DATA_LOADER.ENABLE_MULTI_THREAD_DECODE,
        )
        if self.split != "train":
            return self._eval_view(frames, spatial)
        clips = [self._train_view(frames) for _ in range(self._num_samples)]
        return clips[0] if self._num_samples == 1 else clips

    def _train_view(self, frames):
        data = self.cfg.DATA
        clip = self._rand_augment(frames) if self._rand_augment is not None else frames
        clip = clip.permute(0, 3, 1, 2)  # T C H W
        if data.TRAIN_JITTER_SCALES_RELATIVE:
            clip = vt.random_resized_crop(clip, data.TRAIN_CROP_SIZE, *crop_range(self.cfg), self._uint8)
        else:
            min_size, max_size = data.TRAIN_JITTER_SCALES
            clip = vt.random_short_side_scale_jitter(clip if self._uint8 else clip.float(), min_size, max_size, data.INV_UNIFORM_SAMPLE)
            clip = vt.random_crop(clip, data.TRAIN_CROP_SIZE)
        if data.RANDOM_FLIP:
            clip = vt.random_horizontal_flip(clip)
        if self._uint8:  # AUG.ON_DEVICE: RandAugment, normalisation and erasing happen on the device
            return clip.permute(1, 0, 2, 3).contiguous()  # C T H W uint8
        clip = vt.normalize(clip, data.MEAN, data.STD)
        if self._erase is not None:
            # timm erases each frame of a [T, C, H, W] batch on its own, as PySlowFast's recipe does.
            clip = self._erase(clip)
        return self._finish(clip)

    def _eval_view(self, frames, spatial):
        data = self.cfg.DATA
        three_crops = self.split == "test" and self.cfg.TEST.NUM_SPATIAL_CROPS > 1
        short_side = data.TEST_CROP_SIZE if three_crops else data.TRAIN_JITTER_SCALES[0]
        clip = vt.short_side_resize(frames.permute(0, 3, 1, 2).float(), short_side)
        clip = vt.uniform_crop(clip, data.TEST_CROP_SIZE, spatial)
        return self._finish(vt.normalize(clip, data.MEAN, data.STD))

    def _finish(self, clip):
        return model_channels(clip.permute(1, 0, 2, 3), self.cfg).contiguous()  # C T H W
