"""Config of a tiny Rev-ViT training step on CUDA in a chosen precision, shared by the tests/cuda files."""

import torch

from helpers import CUDA_TRAIN_OPTS as TRAIN_OPTS, make_cfg

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_opts(name):
    """Overrides for fp32 / bf16 / fp16 training (TRAIN.MIXED_PRECISION_DTYPE forces the dtype)."""
    if name == "fp32":
        return ["TRAIN.MIXED_PRECISION", "False"]
    return ["TRAIN.MIXED_PRECISION", "True", "TRAIN.MIXED_PRECISION_DTYPE", {"bf16": "bfloat16", "fp16": "float16"}[name]]


def train_cfg(*opts):
    return make_cfg("configs/ImageNet/REV_VIT_S.yaml", [*TRAIN_OPTS, *opts])


def batch(cfg, device, n=8):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, 3, cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.TRAIN_CROP_SIZE, generator=g)
    return [x.to(device)], (torch.arange(n) % cfg.MODEL.NUM_CLASSES).to(device)
