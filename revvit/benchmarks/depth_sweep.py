"""Memory against depth at one width: the reversible stack's activations should not grow with it.

The sweep is the memory table (``memory_table``) over one config at several depths, at a small input
so that the deep non-reversible models fit and a step stays affordable on a CPU. ``saved_bytes_sweep``
is its cheap, exact companion: the bytes autograd keeps for backward after one training forward, which
needs no training step and does not depend on the allocator or the load.
"""

import torch

from .memory_table import TableModel
from .numerics import step_context
from .probes import saved_bytes
from .settings import PAPER_WAYS, StepSpec
from .step import build_run

__all__ = ["saved_bytes_sweep", "sweep_models"]


def sweep_models(config, depths, crop_size, batches):
    """TableModels of ``config`` at each depth of ``depths`` and ``crop_size`` pixels, named "depth N"."""
    return tuple(
        TableModel(f"depth {d}", config, tuple(batches), opts=("MVIT.DEPTH", str(d), "DATA.TRAIN_CROP_SIZE", str(crop_size)))
        for d in depths
    )


def saved_bytes_sweep(config, depths, crop_size, batch_size=2, ways=PAPER_WAYS, opts=(), threads=None, log=None,
                      device="cpu", precision="fp32", attention="fused"):
    """Bytes kept for backward per image after one training forward, per depth and way (this process)."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device)
    rows = []
    for depth in depths:
        for way in ways:
            spec = StepSpec(config=config, way=way, batch_size=batch_size, device=str(device), precision=precision,
                            attention=attention,
                            opts=tuple(opts) + ("MVIT.DEPTH", str(depth), "DATA.TRAIN_CROP_SIZE", str(crop_size)))
            torch.manual_seed(spec.seed)
            _, model, _, inputs, labels = build_run(spec, device)
            with step_context(precision, attention, device):
                kept = saved_bytes(model, inputs, labels)
            rows.append({"depth": depth, "way": way, "device": str(device), "precision": precision, "attention": attention,
                         "params": sum(p.numel() for p in model.parameters()),
                         "batch_size": batch_size, "saved_bytes_per_image": kept / batch_size})
            del model
            if log:
                log(f"  depth {depth} {way}: {kept / batch_size / 2**20:.3f} MiB kept for backward per image")
    return rows
