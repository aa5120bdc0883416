"""What revvit takes from timm beyond its public calls: the random-resized-crop defaults, and timm's
PIL RandAugment made safe with Pillow >= 11.

timm exports no constants for its random-resized-crop range: ``create_transform`` and
``RandomResizedCropAndInterpolation`` both default to scale (0.08, 1) and ratio (3/4, 4/3). The image
and clip recipes read them here, from the class's own defaults, whenever DATA.TRAIN_JITTER_*_RELATIVE
is empty.

timm's PosterizeIncreasing keeps ``4 - int(level * 0.4)`` bits, which is 0 when the magnitude noise
reaches level 10 (2.3% of its draws at magnitude 9, std 0.5). Pillow >= 11 refuses 0 bits with a
ValueError that ends the run: once per ~220 training images with Rev-MViT-B's ImageNet recipe
(rand-m9-n6-mstd0.5-inc1: 6 ops x 1/15 x p 0.5 x 2.3%); the m6 / m7 recipes cannot reach level 10. Older
Pillow returned the image that keeps no bit, black. We give that image back, as the recipe was
trained with it and as the tensor RandAugment (rand_augment.py) does.
"""

import inspect

from PIL import Image
from timm.data.auto_augment import RandAugment, posterize
from timm.data.transforms import RandomResizedCropAndInterpolation

__all__ = ["crop_range", "posterize_any_bits", "pillow_safe"]

_TIMM_CROP = inspect.signature(RandomResizedCropAndInterpolation).parameters


def crop_range(cfg):
    """``(scale, ratio)`` of the training random-resized crop: DATA.TRAIN_JITTER_SCALES_RELATIVE and
    DATA.TRAIN_JITTER_ASPECT_RELATIVE, each where empty timm's default."""
    data = cfg.DATA
    scale = tuple(data.TRAIN_JITTER_SCALES_RELATIVE) or tuple(_TIMM_CROP["scale"].default)
    ratio = tuple(data.TRAIN_JITTER_ASPECT_RELATIVE) or tuple(_TIMM_CROP["ratio"].default)
    return scale, ratio


def posterize_any_bits(img, bits_to_keep, **kwargs):
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # no bit kept: black, as Pillow < 11 gave
    return posterize(img, bits_to_keep, **kwargs)


def pillow_safe(transform):
    """``transform`` (a timm transform, a Compose of them, or RandAugment) with its posterize ops safe; in place."""
    parts = getattr(transform, "transforms", [transform])
    for part in parts:
        if isinstance(part, RandAugment):
            for op in part.ops:
                if op.aug_fn is posterize:
                    op.aug_fn = posterize_any_bits
    return transform
