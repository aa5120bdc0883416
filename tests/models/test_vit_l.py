"""ViT-L/16 benchmark configs (no published checkpoint): the paper's layout, the Rev-ViT-B recipe, and a
parameter count checked against timm's ViT-L/16, an independent implementation.

A 305M-parameter model takes seconds to build on a busy CPU, so the counts are taken at depths 1 and 2
with ViT-L's width and extended linearly to 24 (the blocks are identical, so this is exact).
"""

import pytest
import timm
import torch

from helpers import REPO, make_cfg
from revvit.models import build_model
from revvit.utils.model_stats import params_count

REV_L, TWIN_L, REV_B = "configs/ImageNet/REV_VIT_L.yaml", "configs/ImageNet/VIT_L.yaml", "configs/ImageNet/REV_VIT_B.yaml"


def _count_at_depth_24(path):
    one, two = (params_count(build_model(make_cfg(path, ["MVIT.DEPTH", str(d)]))) for d in (1, 2))
    return one + 23 * (two - one), two - one


def test_vit_l_is_vit_b_recipe_at_vit_l_size():
    large, base = make_cfg(REV_L), make_cfg(REV_B)
    assert (large.MVIT.DEPTH, large.MVIT.EMBED_DIM, large.MVIT.NUM_HEADS) == (24, 1024, 16)
    assert list(large.MVIT.PATCH_KERNEL) == list(large.MVIT.PATCH_STRIDE) == [16, 16]
    assert (large.DATA.TRAIN_CROP_SIZE, large.MODEL.NUM_CLASSES, large.MVIT.REV.ENABLE) == (224, 1000, True)
    twin = make_cfg(TWIN_L)
    assert twin.MVIT.REV.ENABLE is False and twin.OUTPUT_DIR != large.OUTPUT_DIR
    # Everything else is Rev-ViT-B's recipe.
    for key in ("DEPTH", "EMBED_DIM", "NUM_HEADS"):
        large.MVIT[key] = base.MVIT[key]
    large.OUTPUT_DIR = base.OUTPUT_DIR
    assert large == base
    with open(f"{REPO}/{REV_L}") as f:
        assert "no published checkpoint" in f.read()


def test_vit_l_parameter_count_against_timm():
    with torch.device("meta"):  # counts only; no memory
        reference = timm.create_model("vit_large_patch16_224", pretrained=False, num_classes=1000)
    timm_count = sum(p.numel() for p in reference.parameters())
    assert timm_count == 304_326_632  # the known ~304M of ViT-L/16
    twin, twin_block = _count_at_depth_24(TWIN_L)
    assert twin_block == sum(p.numel() for p in reference.blocks[0].parameters())
    # No class token (CLS_EMBED_ON False, mean pooling), so 196 positions instead of 197: two 1024-vectors fewer.
    assert twin == timm_count - 2 * 1024
    rev, rev_block = _count_at_depth_24(REV_L)
    assert rev_block == twin_block  # a reversible block is F (norm + attention) and G (norm + MLP): the same weights
    # The two-stream head: the final norm and the classifier see both streams concatenated (2 x 1024 inputs).
    assert rev == twin + 2 * 1024 + 1000 * 1024
    assert rev == 305_350_632


@pytest.mark.parametrize("path", [REV_L, TWIN_L])
def test_vit_l_keys_follow_the_vit_b_layout(path):
    base = build_model(make_cfg(path.replace("_L", "_B"), ["MVIT.DEPTH", "2"])).state_dict()
    large = build_model(make_cfg(path, ["MVIT.DEPTH", "2"])).state_dict()
    assert list(large) == list(base)
    widen = {768: 1024, 1536: 2048, 3072: 4096}
    assert [tuple(v.shape) for v in large.values()] == [tuple(widen.get(n, n) for n in v.shape) for v in base.values()]
