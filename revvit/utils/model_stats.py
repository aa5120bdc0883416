"""Model size and cost: parameter count and GFLOPs for one input.

The numbers must be comparable with published ones (and with PySlowFast's log lines), so the FLOP
count follows fvcore's convention: one multiply-add is one flop, measured in eval mode on a single
sample. Elementwise ops (add, softmax, gelu) are not counted, as in the papers' tables.
"""

from collections import Counter
from math import prod

import warnings

import torch
from timm.utils import unwrap_model

with warnings.catch_warnings():
    # fvcore.nn scripts its focal loss at import time, which torch now flags as deprecated; that
    # warning is about fvcore's own code and would greet every user of run_net.py.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

__all__ = ["analysis_input", "input_shape", "params_count", "gflops"]


def params_count(model):
    """Total number of parameter elements (trainable or not), as papers report it."""
    return sum(p.numel() for p in unwrap_model(model).parameters())


def input_shape(cfg, batch_size=1, train=True):
    """Shape of one model input: ``[B,C,H,W]`` for images, ``[B,C,T,H,W]`` for clips.

    Image vs video is decided by ``MVIT.PATCH_2D`` (the model's own switch), not by the dataset name.
    """
    size = cfg.DATA.TRAIN_CROP_SIZE if train else cfg.DATA.TEST_CROP_SIZE
    channels = cfg.DATA.INPUT_CHANNEL_NUM[0]
    if cfg.MVIT.PATCH_2D:
        return (batch_size, channels, size, size)
    return (batch_size, channels, cfg.DATA.NUM_FRAMES, size, size)


def analysis_input(cfg, use_train_input=False, device=None):
    """A batch-1 input in the model's expected layout: ``[x]``."""
    return [torch.rand(input_shape(cfg, 1, use_train_input), device=device)]


def _sdpa_flops(inputs, outputs):
    """fvcore handle for ``scaled_dot_product_attention``: the two matmuls (QK^T and AV).

    fvcore has no handle for the fused op, so without this attention would count zero flops and
    the totals would fall below the published ones, which counted the explicit matmuls.
    """
    q, k, v = (get_shape(x) for x in inputs[:3])
    *batch, lq, d = q
    lk, dv = k[-2], v[-1]
    return Counter({"matmul": prod(batch) * lq * lk * (d + dv)})


def _run_analysis(analysis_cls, model, cfg, use_train_input):
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        inputs = analysis_input(cfg, use_train_input, device)
        with torch.no_grad():
            counter = analysis_cls(model, (inputs,))
            if analysis_cls is FlopCountAnalysis:
                counter.set_op_handle("aten::scaled_dot_product_attention", _sdpa_flops)
            counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return counter.total()
    finally:
        model.train(was_training)


def gflops(model, cfg, use_train_input=False):
    """GFLOPs of one eval-mode forward on one sample (one view for video)."""
    return _run_analysis(FlopCountAnalysis, model, cfg, use_train_input) / 1e9
