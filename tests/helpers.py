"""Shared test utilities: where the reference data lives and how to build small configs."""

import os

from revvit.config import get_cfg, merge_file, merge_opts

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The official fixtures, layouts and YAML files (see reference/*/README.md for their provenance).
REFERENCE = os.path.join(REPO, "tests", "reference")
OFFICIAL_CONFIGS = os.path.join(REFERENCE, "official_configs")


def make_cfg(path, opts=()):
    """Defaults <- YAML (repo-relative or absolute) <- opts, unfrozen and unvalidated."""
    cfg = get_cfg()
    merge_file(cfg, path if os.path.isabs(path) else os.path.join(REPO, path))
    merge_opts(cfg, list(opts))
    return cfg


def rel_err(a, b):
    """max |a - b| / max |b|: the tolerance measure of the official fixtures."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def max_rel_diff(a, b):
    """Largest per-tensor max|a-b|/max|b| over two dicts of gradients; tensors whose true gradient is
    exactly zero (k biases, whose shift softmax cancels) hold rounding noise only and are compared to
    the largest gradient."""
    scale = max(t.abs().max() for t in b.values())
    worst = 0.0
    for name in b:
        own = b[name].abs().max()
        denom = own if own > 1e-7 * scale else scale
        worst = max(worst, ((a[name] - b[name]).abs().max() / denom).item())
    return worst


# Tiny versions of the published reversible models: config, overrides, input shape.
TINY_VIT = [
    "MVIT.EMBED_DIM", "32", "MVIT.NUM_HEADS", "2", "MVIT.DEPTH", "3",
    "MVIT.PATCH_KERNEL", "[8, 8]", "MVIT.PATCH_STRIDE", "[8, 8]",
    "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_CROP_SIZE", "32", "MODEL.NUM_CLASSES", "5",
]
TINY_MVIT_IMAGE = [
    "MVIT.EMBED_DIM", "8", "MVIT.DEPTH", "5", "MVIT.DIM_MUL", "[[1, 2.0], [3, 2.0]]",
    "MVIT.HEAD_MUL", "[[1, 2.0], [3, 2.0]]", "MVIT.POOL_Q_STRIDE", "[[1, 1, 2, 2], [3, 1, 2, 2]]",
    "MVIT.REV.BUFFER_LAYERS", "[1, 3]", "DATA.TRAIN_CROP_SIZE", "32", "DATA.TEST_CROP_SIZE", "32",
    "MODEL.NUM_CLASSES", "5",
]
TINY_MVIT_VIDEO = [
    "MVIT.EMBED_DIM", "8", "MVIT.DEPTH", "5", "MVIT.DIM_MUL", "[[2, 2.0], [3, 2.0]]",
    "MVIT.HEAD_MUL", "[[2, 2.0], [3, 2.0]]", "MVIT.POOL_Q_STRIDE", "[[2, 1, 2, 2], [3, 1, 2, 2]]",
    "MVIT.REV.BUFFER_LAYERS", "[2, 3]", "DATA.NUM_FRAMES", "4", "DATA.TRAIN_CROP_SIZE", "32",
    "DATA.TEST_CROP_SIZE", "32", "MODEL.NUM_CLASSES", "5", "MVIT.CLS_EMBED_ON", "False",
]
# A bias added to every key shifts all of a query's scores equally; softmax cancels it: its true
# gradient is exactly zero, so only rounding noise is left to compare.
ZERO_GRAD_SUFFIXES = ("attn.k.bias", "attn.norm_k.bias")
TINY_MODELS = {
    "rev_vit": ("configs/ImageNet/REV_VIT_B.yaml", TINY_VIT, (3, 3, 32, 32)),
    "rev_mvit_image": ("configs/ImageNet/REV_MVIT_B_16_CONV.yaml", TINY_MVIT_IMAGE, (3, 3, 32, 32)),
    "rev_mvit_video": ("configs/Kinetics/REV_MVIT_B_16x4_CONV.yaml", TINY_MVIT_VIDEO, (2, 3, 4, 32, 32)),
}
