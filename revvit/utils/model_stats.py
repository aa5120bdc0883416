"""Model size and cost: parameter count and FLOPs, for one input or one training step.

One FLOP counter serves both: ``FlopCounter``, torch's formulas (``torch.utils.flop_counter``'s
``flop_registry``, multiply-add = 2) over every op dispatched. It sees the backward and a reversible
stack's recomputation, which a traced forward (fvcore) cannot. ``gflops`` reports it as the papers
and PySlowFast's logs do (fvcore's convention): one multiply-add is one flop, eval mode, one sample,
fused attention as its two matmuls, LayerNorm at fvcore's estimate, other elementwise ops (add,
softmax, gelu) not counted. It gives the official FLOPs of the published models to the flop.
"""

import torch
from timm.utils import unwrap_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

__all__ = ["FlopCounter", "analysis_input", "attention_flops", "input_shape", "params_count", "gflops"]


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


def attention_flops(q, k, v, backward=False):
    """FLOPs of fused attention counted as its two matmuls (QK^T, AV); its backward does four of that size."""
    *batch, lq, d = q.shape
    lk, dv = k.shape[-2], v.shape[-1]
    n = 2 * torch.Size(batch).numel() * lq * lk * (d + dv)
    return 2 * n if backward else n


def layer_norm_flops(x, affine):
    """fvcore's estimate for a LayerNorm, which the published FLOPs include: 5 (4 without affine) per element.

    In multiply-add = 2 units, like torch's formulas: ``gflops`` halves the total to fvcore's units.
    """
    return 2 * x.numel() * (5 if affine else 4)


# torch's registry has the CUDA attention kernels but not the fused CPU one: name -> (q, k, v) position.
_CPU_ATTENTION = {
    "aten._scaled_dot_product_flash_attention_for_cpu": (slice(0, 3), False),
    "aten._scaled_dot_product_flash_attention_for_cpu_backward": (slice(1, 4), True),
}


class FlopCounter(TorchDispatchMode):
    """FLOPs (multiply-add = 2) of the ops dispatched inside ``with FlopCounter() as c:``, in ``c.total``.

    torch's own ``FlopCounterMode`` adds a module tracker whose hooks reject the tensors a reversible
    stack's no-grad forward hands to its blocks, so the registry is applied here without it.
    """

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry:
            self.total += flop_registry[packet](*args, **kwargs, out_val=out)
        elif str(packet) in _CPU_ATTENTION:
            qkv, backward = _CPU_ATTENTION[str(packet)]
            self.total += attention_flops(*args[qkv], backward=backward)
        elif packet is torch.ops.aten.native_layer_norm:
            self.total += layer_norm_flops(args[0], affine=args[2] is not None)
        return out


def gflops(model, cfg, use_train_input=False):
    """GFLOPs of one eval-mode forward on one sample (one view for video); a multiply-add counts one."""
    model = unwrap_model(model)
    was_training = model.training
    model.eval()
    try:
        inputs = analysis_input(cfg, use_train_input, next(model.parameters()).device)
        with torch.no_grad(), FlopCounter() as counter:
            model(inputs)
        return counter.total / 2 / 1e9
    finally:
        model.train(was_training)
