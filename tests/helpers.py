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


# Tiny training runs (tests/engine): models that train in seconds on data that tinyrun.py generates.
# Rev-ViT: 16x16 images, 4x4 patches (16 tokens), width 16, 3 reversible blocks.
REV_VIT = [
    "TRAIN.DATASET", "imagenet", "TEST.DATASET", "imagenet",
    "MVIT.PATCH_2D", "True", "MVIT.CLS_EMBED_ON", "False", "MVIT.REV.ENABLE", "True",
    "MVIT.PATCH_KERNEL", "[4,4]", "MVIT.PATCH_STRIDE", "[4,4]", "MVIT.PATCH_PADDING", "[0,0]",
    "MVIT.EMBED_DIM", "16", "MVIT.NUM_HEADS", "2", "MVIT.DEPTH", "3", "MVIT.DROPPATH_RATE", "0.1",
    "MVIT.ZERO_DECAY_POS_CLS", "True", "MODEL.DROPOUT_RATE", "0.0",
    "DATA.TRAIN_CROP_SIZE", "16", "DATA.TEST_CROP_SIZE", "16", "DATA.INPUT_CHANNEL_NUM", "[3]", "DATA.NUM_FRAMES", "1",
    "DATA.MEAN", "[0.5,0.5,0.5]", "DATA.STD", "[0.25,0.25,0.25]", "DATA.IN_VAL_CROP_RATIO", "1.0",
]

# Rev-MViT on clips: 4 frames of 16x16, one stage transition (block 1) between reversible blocks.
REV_MVIT_VIDEO = [
    "TRAIN.DATASET", "kinetics", "TEST.DATASET", "kinetics", "DATA.DECODING_BACKEND", "pyav",
    "MVIT.PATCH_2D", "False", "MVIT.CLS_EMBED_ON", "False", "MVIT.REV.ENABLE", "True", "MVIT.SEP_POS_EMBED", "True",
    "MVIT.PATCH_KERNEL", "[3,4,4]", "MVIT.PATCH_STRIDE", "[2,4,4]", "MVIT.PATCH_PADDING", "[1,0,0]",
    "MVIT.EMBED_DIM", "16", "MVIT.NUM_HEADS", "1", "MVIT.DEPTH", "3", "MVIT.DROPPATH_RATE", "0.1",
    "MVIT.DIM_MUL", "[[1,2.0]]", "MVIT.HEAD_MUL", "[[1,2.0]]", "MVIT.POOL_Q_STRIDE", "[[1,1,2,2]]",
    "MVIT.POOL_KVQ_KERNEL", "[3,3,3]", "MVIT.POOL_KV_STRIDE_ADAPTIVE", "[1,2,2]", "MVIT.REV.BUFFER_LAYERS", "[1]",
    "MODEL.DROPOUT_RATE", "0.0", "DATA.NUM_FRAMES", "4", "DATA.SAMPLING_RATE", "2", "DATA.INPUT_CHANNEL_NUM", "[3]",
    "DATA.TRAIN_CROP_SIZE", "16", "DATA.TEST_CROP_SIZE", "16", "DATA.TRAIN_JITTER_SCALES", "[16,20]",
    "TEST.NUM_ENSEMBLE_VIEWS", "2", "TEST.NUM_SPATIAL_CROPS", "1",
]

# Solver, logging and launch settings common to all tiny runs (no augmentation, no mixup, one process).
COMMON = [
    "SOLVER.OPTIMIZING_METHOD", "adamw", "SOLVER.BASE_LR", "0.005", "SOLVER.WARMUP_EPOCHS", "1.0",
    "SOLVER.WARMUP_START_LR", "0.0005", "SOLVER.COSINE_END_LR", "0.0001", "SOLVER.COSINE_AFTER_WARMUP", "True",
    "SOLVER.WEIGHT_DECAY", "0.05", "SOLVER.ZERO_WD_1D_PARAM", "True", "SOLVER.CLIP_GRAD_L2NORM", "1.0",
    "MODEL.LOSS_FUNC", "soft_cross_entropy", "AUG.ENABLE", "False", "MIXUP.ENABLE", "False",
    "DATA_LOADER.NUM_WORKERS", "0", "DATA_LOADER.PIN_MEMORY", "False", "NUM_GPUS", "0", "NUM_SHARDS", "1", "LOG_PERIOD", "1",
    "TRAIN.BATCH_SIZE", "8", "TEST.BATCH_SIZE", "8", "TRAIN.EVAL_PERIOD", "1", "TRAIN.CHECKPOINT_PERIOD", "1",
    "TRAIN.AUTO_RESUME", "True", "RNG_SEED", "3",
]

# A tiny Rev-ViT training step on one GPU (tests/cuda/cudarun.py).
CUDA_TRAIN_OPTS = [
    *TINY_VIT, "MVIT.DROPPATH_RATE", "0.1", "MODEL.LOSS_FUNC", "cross_entropy", "MIXUP.ENABLE", "False",
    "SOLVER.OPTIMIZING_METHOD", "adamw", "SOLVER.BASE_LR", "0.001", "SOLVER.WEIGHT_DECAY", "0.05",
    "NUM_GPUS", "1", "TRAIN.BATCH_SIZE", "8",
]
