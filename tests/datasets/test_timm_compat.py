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
