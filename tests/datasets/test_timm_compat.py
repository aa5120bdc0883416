"""timm's PIL RandAugment keeps working where it asks Pillow for 0 bits of posterization."""

import random

import numpy as np
from PIL import Image
from timm.data.auto_augment import rand_augment_transform

from revvit.datasets.timm_compat import pillow_safe, posterize_any_bits


def test_zero_bits_give_black_and_other_bits_are_pillows():
    img = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3) * 5)
    assert np.asarray(posterize_any_bits(img, 0)).max() == 0
    assert np.array_equal(np.asarray(posterize_any_bits(img, 2)), np.asarray(img) & 0b11000000)


def test_the_recipe_survives_level_10_posterize():
    # Magnitude 10 with no noise: every PosterizeIncreasing draw keeps 4 - int(10 * 0.4) = 0 bits.
    ra = pillow_safe(rand_augment_transform("rand-m10-n3-inc1", {"img_mean": (124, 116, 104)}))
    ra.ops = [op for op in ra.ops if op.name == "PosterizeIncreasing"]
    ra.ops[0].prob = 1.0
    random.seed(0), np.random.seed(0)
    out = ra(Image.new("RGB", (8, 8), (200, 100, 50)))
    assert np.asarray(out).max() == 0


def test_every_training_crop_takes_timms_range_or_the_configs():
    from timm.data.transforms import RandomResizedCropAndInterpolation

    from revvit.config import get_cfg
    from revvit.datasets.imagenet import build_image_transform, build_uint8_crop
    from revvit.datasets.timm_compat import crop_range

    cfg = get_cfg()
    cfg.DATA.TRAIN_JITTER_SCALES_RELATIVE, cfg.DATA.TRAIN_JITTER_ASPECT_RELATIVE = [], []
    assert crop_range(cfg) == ((0.08, 1.0), (3 / 4, 4 / 3))
    cfg.AUG.ENABLE = False
    for transform in (build_image_transform(cfg, train=True), build_uint8_crop(cfg)):
        crop = transform.transforms[0]
        assert isinstance(crop, RandomResizedCropAndInterpolation) and (crop.scale, crop.ratio) == ((0.08, 1.0), (3 / 4, 4 / 3))
    cfg.DATA.TRAIN_JITTER_SCALES_RELATIVE, cfg.DATA.TRAIN_JITTER_ASPECT_RELATIVE = [0.5, 1.0], [0.9, 1.1]
    assert crop_range(cfg) == ((0.5, 1.0), (0.9, 1.1))
    assert (build_uint8_crop(cfg).transforms[0].scale, build_uint8_crop(cfg).transforms[0].ratio) == ((0.5, 1.0), (0.9, 1.1))
