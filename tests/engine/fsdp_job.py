"""The FSDP-vs-DDP job of tests/engine/test_fsdp.py (spawned processes import it from here)."""

import os

import torch

from revvit.config import get_cfg, merge_opts
from revvit.engine.losses import build_loss
from revvit.engine.sharding import full_states, local_state_bytes, set_full_states, shard_model
from revvit.engine.train import _wrap_ddp, train_step
from revvit.models import build_model
from revvit.solver import build_optimizer
from revvit.utils import checkpoint as cu
from revvit.utils import distributed as du

from tinyrun import COMMON, REV_MVIT_VIDEO, REV_VIT

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
        model = _wrap_ddp(model, torch.device("cpu"))
    scaler, loss_fn = torch.amp.GradScaler("cpu", enabled=False), build_loss(cfg)
    for x, y in _batches(cfg, shape):
        train_step(model, optimizer, scaler, loss_fn, [x], y, cfg, torch.device("cpu"))
    return model, optimizer, local_state_bytes(cu.unwrap_model(model), optimizer)


def fsdp_vs_ddp(cfg):
    """DDP run, FSDP run, then each resumed from the other's checkpoint; rank 0 saves what the test compares."""
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
