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
autocast dtype). The encoder makes the reversible streams float32, and a block unit leaves its inputs
as they come (``cast_forward_inputs=False``): a stream reaches F and G in float32, as under DDP, and
autocast rounds only what a matmul reads. Every LayerNorm inside a block is then a unit of its own
with float32 weights, as without FSDP: a norm may read a float32 stream (CPU LayerNorm refuses
bfloat16 weights on a float32 input; CUDA's autocast runs norms in float32 anyway). These units stay
gathered from forward to backward (a few KiB each) and their block prefetches them, so they add one
small all-gather and one reduce-scatter per norm and step, and the results match DDP's.

Checkpoints hold full state dicts in the layout of a plain run (``full_states`` / ``set_full_states``,
passed to ``revvit.utils.checkpoint``), so FSDP and plain checkpoints are interchangeable.
"""

import torch
from timm.utils import unwrap_model
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    StateDictOptions,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard, MixedPrecisionPolicy
from torch.distributed.tensor import DTensor

from revvit.models.reversible import ReversibleBlock
from revvit.utils import checkpoint as cu
from revvit.utils import distributed as du


def shard_units(model):
    """The modules that become FSDP units, bottom to top (the root excluded)."""
    if getattr(model, "enable_rev", False):
        for layer in model.rev_backbone.layers:
            yield from (layer.F, layer.G) if isinstance(layer, ReversibleBlock) else (layer,)
    else:
        yield from model.blocks


def _norms(unit):
    return [m for m in unit.modules() if isinstance(m, torch.nn.LayerNorm) and m.weight is not None]


def shard_model(model, device, param_dtype=None):
    """Shard ``model`` in place over all processes of the job; returns it (now an FSDPModule).

    ``param_dtype``: with TRAIN.MIXED_PRECISION, the autocast dtype; FSDP then gathers the blocks'
    weights (not their norms') in that dtype and reduces all gradients in float32 (``MixedPrecisionPolicy``).
    """
    if du.get_world_size() == 1:  # nothing to shard over: a plain model
        return model
    mesh = init_device_mesh(device.type, (du.get_world_size(),))
    reduce_dtype = torch.float32 if param_dtype else None
    blocks = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype, cast_forward_inputs=False)
    full = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=reduce_dtype, cast_forward_inputs=False)
    for unit in shard_units(model):
        norms = _norms(unit) if param_dtype is not None else []
        for norm in norms:
            fully_shard(norm, mesh=mesh, mp_policy=full, reshard_after_forward=False)
        fully_shard(unit, mesh=mesh, mp_policy=blocks)
        if norms:
            unit.set_modules_to_forward_prefetch(norms)
    fully_shard(model, mesh=mesh, mp_policy=full)
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


def is_sharded(model):
    return any(isinstance(p, DTensor) for p in model.parameters())


def full_states(model, optimizer):
    """Model and optimizer state as full, unsharded tensors in the layout of a plain run (optimizer
    state keyed by parameter index, as ``optimizer.state_dict()``). Under FSDP every process must
    call this (it gathers the shards); only rank 0 gets the states."""
    model = unwrap_model(model)
    if not is_sharded(model):
        return cu.plain_states(model, optimizer)
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(model, options=options)
    if optimizer is None:
        return model_state, None
    named = get_optimizer_state_dict(model, optimizer, options=options)
    if not named:  # not rank 0
        return model_state, None
    index = {}
    groups = [dict(g, params=[index.setdefault(n, len(index)) for n in g["params"]]) for g in named["param_groups"]]
    return model_state, {"state": {index[n]: v for n, v in named["state"].items()}, "param_groups": groups}


def _optimizer_state_by_name(state, model, optimizer):
    """An index-keyed optimizer state (``optimizer.state_dict()`` layout) keyed by parameter names,
    as ``set_optimizer_state_dict`` takes it."""
    name_of = {p: n for n, p in model.named_parameters()}
    names = [name_of[p] for g in optimizer.param_groups for p in g["params"]]
    groups = [dict(g, params=[names[i] for i in g["params"]]) for g in state["param_groups"]]
    return {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}


def set_full_states(model, model_state, optimizer=None, optimizer_state=None):
    """Load plain-layout states into a sharded or plain model (every process calls it with the full
    states); returns the model keys the state left out."""
    if not is_sharded(model):
        return cu.set_plain_states(model, model_state, optimizer, optimizer_state)
    result = set_model_state_dict(model, model_state, options=StateDictOptions(full_state_dict=True, strict=False))
    if optimizer is not None:
        named = _optimizer_state_by_name(optimizer_state, model, optimizer)
        set_optimizer_state_dict(model, optimizer, named, options=StateDictOptions(full_state_dict=True))
    return result.missing_keys
