"""FSDP2 (``MODEL.FSDP``): one ``fully_shard`` unit per block, and gradient norms of sharded gradients.

Each process then holds 1/world of the weights, gradients and optimizer moments, the memory that
remains per device once reversible training has removed the activations that grow with depth.

Units: a reversible block is sharded as its two branches F and G, because its backward
(``RevBackProp``) recomputes and differentiates F and G one at a time, calling each as a module:
FSDP2's pre-forward hook all-gathers exactly the branch being recomputed and its post-backward hook
reduce-scatters that branch's gradients as soon as they are accumulated. Stage transitions and
non-reversible blocks are one unit each; the stem, final norm and head belong to the root unit.

Mixed precision: the block units gather their weights in the autocast dtype; the root unit keeps
float32 weights, as without FSDP (autocast still runs the stem's convolution and the head in the
autocast dtype). The encoder makes the reversible streams float32, and the tail's LayerNorm then sees
float32 weights with its float32 input (CPU LayerNorm refuses bfloat16 weights on float32 input).
Full state dicts for checkpoints live in ``revvit.utils.checkpoint``.
"""

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard, MixedPrecisionPolicy
from torch.distributed.tensor import DTensor

from revvit.models.reversible import ReversibleBlock
from revvit.utils import distributed as du


def shard_units(model):
    """The modules that become FSDP units, bottom to top (the root excluded)."""
    if getattr(model, "enable_rev", False):
        for layer in model.rev_backbone.layers:
            yield from (layer.F, layer.G) if isinstance(layer, ReversibleBlock) else (layer,)
    else:
        yield from model.blocks


def shard_model(model, device, param_dtype=None):
    """Shard ``model`` in place over all processes of the job; returns it (now an FSDPModule).

    ``param_dtype``: with TRAIN.MIXED_PRECISION, the autocast dtype; FSDP then gathers the blocks'
    weights in that dtype and reduces all gradients in float32 (``MixedPrecisionPolicy``).
    """
    if du.get_world_size() == 1:  # nothing to shard over: a plain model
        return model
    mesh = init_device_mesh(device.type, (du.get_world_size(),))
    reduce_dtype = torch.float32 if param_dtype else None
    blocks = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=blocks)
    root = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=reduce_dtype, cast_forward_inputs=False)
    fully_shard(model, mesh=mesh, mp_policy=root)
    return model


def total_grad_norm(grads):
    """L2 norm of all ``grads``, sharded (DTensor) or not: the same number on every process."""
    norm = torch.nn.utils.get_total_norm(grads)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def local_state_bytes(model, optimizer):
    """Bytes of parameters, gradients and optimizer state this process holds (local shards only)."""

    def local(t):
        t = t.to_local() if isinstance(t, DTensor) else t
        return t.numel() * t.element_size()

    params = list(model.parameters())
    return {
        "params": sum(local(p) for p in params),
        "grads": sum(local(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(local(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.ndim > 0),
    }
