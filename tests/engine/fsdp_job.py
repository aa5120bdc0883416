"""The FSDP-vs-DDP job of tests/engine/test_fsdp.py (spawned processes import it from here)."""

import os

import torch

from revvit.config import get_cfg, merge_opts
from revvit.engine.losses import build_loss
from revvit.engine.sharding import full_states, local_state_bytes, set_full_states, shard_model
from revvit.engine.ddp import wrap_ddp
from revvit.engine.step import train_step
from revvit.models import build_model
from revvit.solver import build_optimizer
from revvit.utils import checkpoint as cu
from revvit.utils import distributed as du

from helpers import COMMON, REV_MVIT_VIDEO, REV_VIT

GLOBAL_BATCH, STEPS = 8, 3
MODELS = {"rev_vit": REV_VIT, "rev_mvit": REV_MVIT_VIDEO}


def fsdp_cfg(name, rev, out_dir):
    opts = MODELS[name]
    cfg = get_cfg()
    merge_opts(cfg, opts + COMMON + ["MODEL.NUM_CLASSES", "3", "MVIT.DROPPATH_RATE", "0.0", "NUM_GPUS", "2",
                                     "MVIT.REV.ENABLE", str(rev), "SOLVER.BASE_LR", "0.01", "OUTPUT_DIR", str(out_dir)])
    cfg.freeze()
    return cfg


def _batches(cfg, shape):
    data = torch.Generator().manual_seed(1)
    rank, share = du.get_rank(), GLOBAL_BATCH // du.get_world_size()
    for _ in range(STEPS):
        x = torch.randn(GLOBAL_BATCH, *shape, generator=data)
        y = torch.randint(0, 3, (GLOBAL_BATCH,), generator=data)
        yield x[rank * share:(rank + 1) * share], y[rank * share:(rank + 1) * share]


def _run(cfg, fsdp, resume_from=None):
    """STEPS steps (after loading ``resume_from``); returns the model, optimizer and the state bytes."""
    shape = (3, cfg.DATA.NUM_FRAMES, 16, 16) if cfg.DATA.NUM_FRAMES > 1 else (3, 16, 16)  # clips or images
    torch.manual_seed(0)
    model = build_model(cfg)
    if fsdp:
        model = shard_model(model, torch.device("cpu"))
    optimizer = build_optimizer(model, cfg)
    if resume_from:
        cu.load_checkpoint(resume_from, model, optimizer, set_states=set_full_states)
    if not fsdp:
        model = wrap_ddp(model, torch.device("cpu"))
    scaler, loss_fn = torch.amp.GradScaler("cpu", enabled=False), build_loss(cfg)
    for x, y in _batches(cfg, shape):
        train_step(model, optimizer, scaler, loss_fn, [x], y, cfg, torch.device("cpu"))
    return model, optimizer, local_state_bytes(cu.unwrap_model(model), optimizer)


def fsdp_vs_ddp(cfg):
    """DDP run, FSDP run, then each resumed from the other's checkpoint; rank 0 saves what the test compares.

    FSDP2's warning that a unit "returned a view tensor" (its hooks could be bypassed) is an error here."""
    import warnings

    warnings.filterwarnings("error", message=".*returned a view tensor")
    out = cfg.OUTPUT_DIR
    results = {}
    for tag, fsdp in (("ddp", False), ("fsdp", True)):
        model, optimizer, nbytes = _run(cfg, fsdp)
        path = cu.save_checkpoint(os.path.join(out, tag), model, optimizer, 0, cfg, states=full_states)
        results[tag] = {"bytes": nbytes}
        du.barrier()
        results[tag]["ckpt"] = cu.read_checkpoint(path)
    # Resume crosswise: FSDP from the DDP checkpoint, DDP from the FSDP checkpoint, 3 more steps each.
    for tag, fsdp, other in (("fsdp_from_ddp", True, "ddp"), ("ddp_from_fsdp", False, "fsdp")):
        model, optimizer, _ = _run(cfg, fsdp, resume_from=cu.checkpoint_path(os.path.join(out, other), 1))
        path = cu.save_checkpoint(os.path.join(out, tag), model, optimizer, 1, cfg, states=full_states)
        du.barrier()
        results[tag] = {"ckpt": cu.read_checkpoint(path)}
    if du.get_rank() == 0:
        torch.save(results, os.path.join(out, "results.pt"))


class _CountAllGathers:
    """Counts FSDP2's all-gathers: it calls torch.distributed's all_gather_into_tensor (torch 2.6-2.11) or
    all_gather_single (later), looked up on the module at call time."""

    NAMES = ("all_gather_into_tensor", "all_gather_single")

    def __init__(self):
        self.count = 0

    def __enter__(self):
        import torch.distributed as dist

        self.saved = {n: getattr(dist, n) for n in self.NAMES if hasattr(dist, n)}
        for name, fn in self.saved.items():
            setattr(dist, name, self._counted(fn))
        return self

    def _counted(self, fn):
        def call(*args, **kwargs):
            self.count += 1
            return fn(*args, **kwargs)

        return call

    def __exit__(self, *exc):
        import torch.distributed as dist

        for name, fn in self.saved.items():
            setattr(dist, name, fn)


def rev_vs_plain_mixed(cfg):
    """FSDP2 with a bfloat16 param_dtype under bfloat16 autocast: the reversible backward's gradients
    against plain autograd through the same sharded blocks, the streams' dtype, and the all-gathers of
    one reversible step; rank 0 saves them. Warnings that FSDP2 raises are errors here."""
    import warnings

    torch.manual_seed(0)
    model = shard_model(build_model(cfg), torch.device("cpu"), torch.bfloat16)
    x, y = next(_batches(cfg, (3, 16, 16)))
    streams = []
    model.rev_backbone.register_forward_hook(lambda m, i, o: streams.append(o.dtype))
    grads, gathers = {}, None
    for rev in (True, False):
        model.rev_backbone.use_rev_backprop = rev
        model.zero_grad(set_to_none=True)
        with warnings.catch_warnings(), _CountAllGathers() as counter:
            warnings.filterwarnings("error", message=".*returned a view tensor")
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model([x]).float(), y)
            loss.backward()
        gathers = counter.count if rev else gathers
        grads[rev] = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    if du.get_rank() == 0:
        blocks = len(model.rev_backbone.layers)
        torch.save({"grads": grads, "streams": streams, "gathers": gathers, "blocks": blocks}, os.path.join(cfg.OUTPUT_DIR, "mixed.pt"))


def fsdp_and_ddp_mixed(cfg):
    """One bfloat16-autocast forward and backward of the same model and batch through DDP (float32
    weights, autocast casting what the matmuls read) and through FSDP2 with a bfloat16 param_dtype; rank 0
    saves each one's logits, full gradients and the dtype in which the streams reach a block's F."""
    from torch.distributed.tensor import DTensor

    x, y = next(_batches(cfg, (3, 16, 16)))
    results = {}
    for tag in ("ddp", "fsdp"):
        torch.manual_seed(0)
        model = build_model(cfg)
        model = shard_model(model, torch.device("cpu"), torch.bfloat16) if tag == "fsdp" else wrap_ddp(model, torch.device("cpu"))
        inner = cu.unwrap_model(model)
        streams = []
        for layer in inner.rev_backbone.layers:
            layer.F.norm.register_forward_pre_hook(lambda m, args: streams.append(args[0].dtype))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model([x]).float()
        torch.nn.functional.cross_entropy(logits, y).backward()
        grads = {n: (p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad).detach().clone()
                 for n, p in inner.named_parameters()}
        results[tag] = {"logits": logits.detach(), "grads": grads, "streams": streams}
        du.barrier()
    if du.get_rank() == 0:
        torch.save(results, os.path.join(cfg.OUTPUT_DIR, "fsdp_ddp.pt"))
