"""Spatial transforms of whole clips: every frame of a clip gets the same crop, flip and RandAugment.

A clip is one moment seen through one camera; if each frame were cropped or colour-shifted on its
own the model would learn to ignore flicker that never occurs in real video. So each random choice
is drawn once per clip and applied to all ``T`` frames. The geometry is torchvision's
(``RandomResizedCrop.get_params``, functional crops and resizes on ``[T, C, H, W]``), RandAugment is
timm's, and the semantics follow PySlowFast's Kinetics recipe: bilinear resizes without antialias
(as the published models were trained), RandAugment on the decoded frames before cropping.
"""

import math
import random

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from timm.data.transforms import str_to_pil_interp
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from .timm_compat import pillow_safe

__all__ = [
    "ClipRandAugment",
    "normalize",
    "random_crop",
    "random_horizontal_flip",
    "random_resized_crop",
    "random_short_side_scale_jitter",
    "short_side_resize",
    "uniform_crop",
]

_BILINEAR = InterpolationMode.BILINEAR


def short_side_resize(clip, size):
    """Resize ``[T, C, H, W]`` so the short side is ``size`` (long side floored, as PySlowFast)."""
    height, width = clip.shape[-2:]
    if min(height, width) == size:
        return clip
    if height <= width:
        new_hw = [size, int(math.floor(width / height * size))]
    else:
        new_hw = [int(math.floor(height / width * size)), size]
    return TF.resize(clip, new_hw, interpolation=_BILINEAR, antialias=False)


def random_short_side_scale_jitter(clip, min_size, max_size, inverse_uniform=False):
    """Short side resized to a size drawn from [min_size, max_size] (or its inverse, uniformly)."""
    if inverse_uniform:
        size = int(round(1.0 / random.uniform(1.0 / max_size, 1.0 / min_size)))
    else:
        size = int(round(random.uniform(min_size, max_size)))
    return short_side_resize(clip, size)


def random_crop(clip, size):
    """A ``size`` x ``size`` crop at one random place for all frames."""
    height, width = clip.shape[-2:]
    if height < size or width < size:
        raise ValueError(f"crop {size} is larger than the frames ({height}x{width}); raise DATA.TRAIN_JITTER_SCALES")
    top = random.randint(0, height - size)
    left = random.randint(0, width - size)
    return clip[..., top : top + size, left : left + size]


def uniform_crop(clip, size, spatial_idx):
    """Crop 0, 1 or 2 along the long side: left/centre/right (or top/centre/bottom)."""
    height, width = clip.shape[-2:]
    top = int(math.ceil((height - size) / 2))
    left = int(math.ceil((width - size) / 2))
    if height > width:
        top = {0: 0, 1: top, 2: height - size}[spatial_idx]
    else:
        left = {0: 0, 1: left, 2: width - size}[spatial_idx]
    return clip[..., top : top + size, left : left + size]


def random_resized_crop(clip, size, scale, ratio, uint8=False):
    """Inception-style crop (area ``scale``, aspect ``ratio``) drawn once, resized to float ``size``
    (``uint8``: resized in uint8, rounded, for AUG.ON_DEVICE workers).

    The crop is cut before the float conversion so that only its pixels are converted.
    """
    top, left, height, width = RandomResizedCrop.get_params(clip, list(scale), list(ratio))
    region = clip[..., top : top + height, left : left + width]
    return TF.resize(region if uint8 else region.float(), [size, size], interpolation=_BILINEAR, antialias=False)


def random_horizontal_flip(clip, prob=0.5):
    return TF.horizontal_flip(clip) if random.random() < prob else clip


def normalize(clip, mean, std):
    """uint8 or [0, 255] float ``[T, C, H, W]`` to ``(x / 255 - mean) / std`` float32."""
    clip = clip.float().div_(255.0)
    mean = torch.as_tensor(mean, dtype=clip.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=clip.dtype).view(1, -1, 1, 1)
    return clip.sub_(mean).div_(std)


class ClipRandAugment:
    """timm's RandAugment (``AUG.AA_TYPE`` policy string) with one draw of operations per clip.

    timm draws the operations, magnitudes and interpolation from Python's ``random`` and NumPy's
    global generators. Restoring both generators' state before each frame replays exactly the same
    draws, so every frame goes through identical operations, using timm's transform unchanged.
    """

    def __init__(self, policy, interpolation="bicubic", mean=(0.45, 0.45, 0.45)):
        self.policy = policy
        self.hparams = {"img_mean": tuple(int(round(255 * m)) for m in mean)}
        if interpolation and interpolation != "random":
            self.hparams["interpolation"] = str_to_pil_interp(interpolation)
        self._by_size = {}

    def _transform(self, height, width):
        # Translations are relative to the frame size, as timm and PySlowFast set them.
        key = (height, width)
        if key not in self._by_size:
            hparams = dict(self.hparams, translate_const=int(min(height, width) * 0.45))
            self._by_size[key] = pillow_safe(rand_augment_transform(self.policy, hparams))
        return self._by_size[key]

    def __call__(self, frames):
        """uint8 ``[T, H, W, 3]`` (tensor or array) to uint8 ``[T, H, W, 3]`` tensor."""
        frames = np.asarray(frames)
        transform = self._transform(*frames.shape[1:3])
        py_state, np_state = random.getstate(), np.random.get_state()
        out = []
        for frame in frames:
            random.setstate(py_state)
            np.random.set_state(np_state)
            out.append(np.asarray(transform(Image.fromarray(frame))))
        return torch.from_numpy(np.stack(out))
