"""Training: epochs of mixed-precision steps, periodic evaluation and checkpoints, exact resume.

Reproducibility is designed in: every epoch starts by reseeding python, numpy and torch from
(RNG_SEED, epoch, rank) and the data order depends only on the epoch, so a run resumed from the
checkpoint of epoch N continues exactly as the uninterrupted run would have, on the same hardware.
"""

import contextlib
import os
import random
import time

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from revvit.models.factory import pretrained_checkpoint
from revvit.solver import build_optimizer, check_schedule, get_lr_at_epoch, set_lr
from revvit.utils import checkpoint as cu
from revvit.utils import curves
from revvit.utils import distributed as du
from revvit.utils import logging
from revvit.utils.meters import TrainMeter, ValMeter, progress
from revvit.utils.metrics import topks_correct
from revvit.utils.model_stats import gflops, params_count

from .losses import build_loss

logger = logging.get_logger(__name__)

__all__ = ["NonFiniteLossError", "autocast", "build_run", "epoch_seed", "seed_all", "train", "train_step"]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops instead of corrupting the weights."""


def seed_all(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(cfg, epoch, rank):
    """A seed that depends only on (RNG_SEED, epoch, rank), so resumed epochs replay exactly."""
    return int(np.random.SeedSequence([cfg.RNG_SEED, epoch, rank]).generate_state(1)[0])


def autocast(cfg, device):
    """bf16 autocast on CPU, fp16 on CUDA, when TRAIN.MIXED_PRECISION; a no-op otherwise."""
    if not cfg.TRAIN.MIXED_PRECISION:
        return contextlib.nullcontext()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def to_device(batch, device):
    inputs, labels, index, meta = batch
    nb = device.type == "cuda"
    inputs = [x.to(device, non_blocking=nb) for x in inputs]
    return inputs, labels.to(device, non_blocking=nb), index.to(device, non_blocking=nb), meta


def _grad_norm_and_clip(model, cfg):
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    if cfg.SOLVER.CLIP_GRAD_L2NORM:
        # clip_grad_norm_ returns the norm before clipping, which is what we want to watch.
        return torch.nn.utils.clip_grad_norm_(params, cfg.SOLVER.CLIP_GRAD_L2NORM)
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if cfg.SOLVER.CLIP_GRAD_VAL:
        torch.nn.utils.clip_grad_value_(params, cfg.SOLVER.CLIP_GRAD_VAL)
    return norm


def train_step(model, optimizer, scaler, loss_fn, inputs, labels, cfg, device):
    """One optimisation step; returns (loss, top1_err, top5_err) averaged over all processes, and the grad norm.

    The loss and errors are all-reduced before backward so that every process sees the same
    non-finite loss and stops together instead of leaving the others waiting in a collective.
    """
    with autocast(cfg, device):
        preds = model(inputs)
        loss = loss_fn(preds, labels)
    hard = labels if labels.ndim == 1 else labels.argmax(dim=1)  # mixup: the dominant class
    n = preds.shape[0]
    top1, top5 = (100.0 * (1.0 - c / n) for c in topks_correct(preds.detach(), hard, (1, 5)))
    stats = du.all_reduce([torch.stack([loss.detach().float(), top1.to(loss.device), top5.to(loss.device)])])[0]
    if not torch.isfinite(stats[0]):
        raise NonFiniteLossError(
            f"The training loss is {stats[0].item()}. Stopping before the weights are corrupted. Lower "
            "SOLVER.BASE_LR, lengthen SOLVER.WARMUP_EPOCHS, set SOLVER.CLIP_GRAD_L2NORM, or turn off "
            "TRAIN.MIXED_PRECISION; then resume from the last checkpoint."
        )
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = _grad_norm_and_clip(model, cfg)
    scaler.step(optimizer)
    scaler.update()
    loss_v, top1_v, top5_v = stats.tolist()
    return loss_v, top1_v, top5_v, float(grad_norm)


def report_bad_samples(counter, split, cur_epoch):
    """Warn (rank 0) with the job-wide number of skipped files; returns that number."""
    total = int(du.all_reduce([torch.tensor(float(counter.count))], average=False)[0].item())
    msg = counter.summary(split, cur_epoch + 1, count=total)
    if msg and du.is_master_proc():
        logger.warning(msg)
    counter.reset()
    return total


def _check_loss_explosion(cfg, meter, loss, cur_epoch, cur_iter):
    """TRAIN.KILL_LOSS_EXPLOSION_FACTOR: stop when the loss jumps far above its recent mean."""
    factor = cfg.TRAIN.KILL_LOSS_EXPLOSION_FACTOR
    recent = list(meter.loss.deque)[-5:]
    if factor > 0 and len(recent) == 5 and loss > factor * sum(recent) / 5:
        raise NonFiniteLossError(
            f"Loss exploded at epoch {cur_epoch + 1} iteration {cur_iter + 1}: {loss:.4g} > "
            f"TRAIN.KILL_LOSS_EXPLOSION_FACTOR {factor} x the mean {sum(recent) / 5:.4g} of the previous 5 iterations."
        )


def train_epoch(loader, model, optimizer, scaler, loss_fn, meter, cur_epoch, cfg, device, writer=None):
    from revvit.datasets import BadSampleCounter

    model.train()
    bad = BadSampleCounter()
    data_size = len(loader)
    meter.iter_tic()
    for cur_iter, batch in enumerate(progress(loader, f"epoch {cur_epoch + 1}/{cfg.SOLVER.MAX_EPOCH}", data_size)):
        bad.update(batch[3])
        inputs, labels, _, _ = to_device(batch, device)
        lr = get_lr_at_epoch(cfg, cur_epoch + cur_iter / data_size)
        set_lr(optimizer, lr)
        meter.data_toc()
        loss, top1, top5, grad_norm = train_step(model, optimizer, scaler, loss_fn, inputs, labels, cfg, device)
        mb_size = inputs[0].shape[0] * du.get_world_size()
        _check_loss_explosion(cfg, meter, loss, cur_epoch, cur_iter)
        meter.update_stats(top1, top5, loss, lr, grad_norm, mb_size)
        if writer is not None:
            step = data_size * cur_epoch + cur_iter
            writer.add_scalars(
                {"Train/loss": loss, "Train/lr": lr, "Train/Top1_err": top1, "Train/Top5_err": top5, "Train/grad_norm": grad_norm},
                global_step=step,
            )
        meter.iter_toc()
        meter.log_iter_stats(cur_epoch, cur_iter)
        meter.iter_tic()
    stats = meter.log_epoch_stats(cur_epoch, {"bad_samples": report_bad_samples(bad, "train", cur_epoch)})
    meter.reset()
    return stats


@torch.no_grad()
def eval_epoch(loader, model, meter, cur_epoch, cfg, device, writer=None):
    """Per-clip top-1/top-5 error on the val split (the full multi-view test is evaluate())."""
    from revvit.datasets import BadSampleCounter, drop_invalid

    model.eval()
    bad = BadSampleCounter()
    meter.iter_tic()
    for cur_iter, batch in enumerate(progress(loader, f"val {cur_epoch + 1}", len(loader))):
        bad.update(batch[3])
        inputs, labels, _, _ = to_device(drop_invalid(*batch), device)
        meter.data_toc()
        if inputs[0].shape[0] == 0:  # every sample of this batch was unreadable
            c1 = c5 = torch.zeros((), device=device)
            n = 0
        else:
            with autocast(cfg, device):
                preds = model(inputs)
            c1, c5 = topks_correct(preds.float(), labels, (1, 5))
            n = preds.shape[0]
        counts = du.all_reduce([torch.stack([c1.float(), c5.float(), torch.tensor(float(n), device=c1.device)])], average=False)[0]
        c1, c5, n = counts.tolist()
        if n > 0:
            meter.update_stats(100.0 * (1 - c1 / n), 100.0 * (1 - c5 / n), int(n))
        meter.iter_toc()
        meter.log_iter_stats(cur_epoch, cur_iter)
        meter.iter_tic()
    report_bad_samples(bad, "val", cur_epoch)
    stats = meter.log_epoch_stats(cur_epoch)
    if writer is not None:
        writer.add_scalars({"Val/Top1_err": stats["top1_err"], "Val/Top5_err": stats["top5_err"]}, global_step=cur_epoch)
    meter.reset()
    return stats


def log_model_info(model, cfg):
    """Parameters and GFLOPs of one input, in the units papers use (rank 0 only)."""
    if not (cfg.LOG_MODEL_INFO and du.is_master_proc()):
        return None
    params = params_count(model)
    try:
        flops = gflops(model, cfg)
    except Exception as e:  # a FLOP counter failure must not stop training; say why it is missing
        logger.warning(f"GFLOPs not measured ({type(e).__name__}: {e})")
        flops = None
    logger.info(f"Model {cfg.MODEL.MODEL_NAME}: {params:,} parameters" + (f", {flops:.4g} GFLOPs per input" if flops is not None else ""))
    return {"params": params, "gflops": flops}


def build_run(cfg):
    """Logging, output dir, seed, model on its device; shared by train() and evaluate()."""
    from revvit.models import build_model

    logging.setup_logging(cfg.OUTPUT_DIR, iter_stats_stdout=cfg.LOG_ITER_STATS_STDOUT)
    if du.is_master_proc():
        os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
        with open(os.path.join(cfg.OUTPUT_DIR, "config.yaml"), "w") as f:
            f.write(cfg.dump())
        logger.info(f"Output in {cfg.OUTPUT_DIR}: config.yaml, stdout.log, json_stats.log, checkpoints/")
    seed_all(cfg.RNG_SEED)
    device = du.get_device(cfg)
    model = build_model(cfg).to(device)
    log_model_info(model, cfg)
    return model, device


def _wrap_ddp(model, device, fp16_allreduce=False):
    """DDP with every parameter used in every step (no find_unused_parameters: RevBackProp returns
    a gradient for each parameter of its stack, so DDP's hooks all fire)."""
    if du.get_world_size() == 1:
        return model
    if device.type == "cuda":
        model = DistributedDataParallel(model, device_ids=[device.index], output_device=device.index)
    else:
        model = DistributedDataParallel(model)
    if fp16_allreduce:  # MODEL.FP16_ALLREDUCE: halve the gradient traffic
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        model.register_comm_hook(state=None, hook=default_hooks.fp16_compress_hook)
    return model


def check_checkpoint_options(cfg):
    """Checkpoint conversions PySlowFast offers that revvit does not: refuse rather than ignore them."""
    for key in ("CHECKPOINT_INFLATE", "CHECKPOINT_IN_INIT"):
        if cfg.TRAIN[key]:
            raise cu.CheckpointError(f"TRAIN.{key} True (image <-> video weight conversion) is not supported by revvit; set it False.")
    for section in ("TRAIN", "TEST"):
        if cfg[section].CHECKPOINT_TYPE != "pytorch":
            raise cu.CheckpointError(f"{section}.CHECKPOINT_TYPE '{cfg[section].CHECKPOINT_TYPE}' is not supported; only 'pytorch' (.pyth) files load.")


def _resume_or_init(cfg, model, optimizer, scaler):
    """Start epoch (0-based): newest own checkpoint (AUTO_RESUME), else TRAIN.CHECKPOINT_FILE_PATH, else 0."""
    check_checkpoint_options(cfg)
    last = cu.latest_checkpoint(cfg.OUTPUT_DIR) if cfg.TRAIN.AUTO_RESUME else None
    if last is not None:
        info = cu.load_checkpoint(last, model, optimizer, scaler)
        logger.info(f"Resuming from {last} (epoch {info['epoch'] + 1} of {cfg.SOLVER.MAX_EPOCH} done)")
        return info["epoch"] + 1
    path = cfg.TRAIN.CHECKPOINT_FILE_PATH or pretrained_checkpoint(cfg)
    if not path:
        return 0
    reset = cfg.TRAIN.CHECKPOINT_EPOCH_RESET or not cfg.TRAIN.CHECKPOINT_FILE_PATH  # MODEL.PRETRAINED: a new run
    info = cu.load_checkpoint(
        path,
        model,
        None if reset else optimizer,
        None if reset else scaler,
        finetune_num_classes=cfg.MODEL.NUM_CLASSES,
        clear_name_patterns=cfg.TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN,
    )
    if info["skipped_keys"]:
        # A new head means a new task: the old optimizer state and epoch count do not apply.
        logger.info(f"Initialised from {path} with a new head; training starts at epoch 1")
        return 0
    if reset or info["epoch"] < 0:
        logger.info(f"Initialised from {path}; training starts at epoch 1")
        return 0
    logger.info(
        f"Initialised from {path} (epoch {info['epoch'] + 1}); continuing at epoch {info['epoch'] + 2} of "
        f"{cfg.SOLVER.MAX_EPOCH}. Set TRAIN.CHECKPOINT_EPOCH_RESET True to start at epoch 1."
    )
    return info["epoch"] + 1


def _is_period_epoch(cfg, cur_epoch, period):
    return (cur_epoch + 1) % max(1, period) == 0 or cur_epoch + 1 == cfg.SOLVER.MAX_EPOCH


def train(cfg):
    """Train ``cfg`` in this process (one member of the job); returns the last epoch's stats."""
    from revvit.datasets import construct_loader, shuffle_dataset

    check_schedule(cfg)
    model, device = build_run(cfg)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.TRAIN.MIXED_PRECISION and device.type == "cuda")
    start_epoch = _resume_or_init(cfg, model, optimizer, scaler)
    model = _wrap_ddp(model, device, cfg.MODEL.FP16_ALLREDUCE)
    loss_fn = build_loss(cfg)

    train_loader = construct_loader(cfg, "train")
    val_loader = construct_loader(cfg, "val") if cfg.TRAIN.EVAL_PERIOD > 0 else None
    train_meter = TrainMeter(len(train_loader), cfg)
    val_meter = ValMeter(len(val_loader), cfg) if val_loader is not None else None
    writer = None
    if cfg.TENSORBOARD.ENABLE and du.is_master_proc():
        writer = logging.TensorboardWriter(cfg)

    if start_epoch >= cfg.SOLVER.MAX_EPOCH:
        logger.info(f"All {cfg.SOLVER.MAX_EPOCH} epochs are already done in {cfg.OUTPUT_DIR}; nothing to train")
    else:
        logger.info(f"Training epochs {start_epoch + 1}..{cfg.SOLVER.MAX_EPOCH}, {len(train_loader)} iterations each")
    stats = {}
    try:
        for cur_epoch in range(start_epoch, cfg.SOLVER.MAX_EPOCH):
            seed_all(epoch_seed(cfg, cur_epoch, du.get_rank()))
            shuffle_dataset(train_loader, cur_epoch)
            epoch_timer = time.perf_counter()
            stats["train"] = train_epoch(train_loader, model, optimizer, scaler, loss_fn, train_meter, cur_epoch, cfg, device, writer)
            t = stats["train"]
            logger.info(
                f"Epoch {cur_epoch + 1}/{cfg.SOLVER.MAX_EPOCH}: loss {t['loss']:.4f}, top-1 err {t['top1_err']:.2f}%, "
                f"lr {t['lr']:.3g}, {time.perf_counter() - epoch_timer:.1f} s, ETA {t['eta']}"
            )
            if _is_period_epoch(cfg, cur_epoch, cfg.TRAIN.CHECKPOINT_PERIOD):
                classes = getattr(train_loader.dataset, "classes", None)
                path = cu.save_checkpoint(cfg.OUTPUT_DIR, model, optimizer, cur_epoch, cfg, scaler, class_names=classes)
                logger.info(f"Saved {path}")
            if val_loader is not None and _is_period_epoch(cfg, cur_epoch, cfg.TRAIN.EVAL_PERIOD):
                stats["val"] = eval_epoch(val_loader, model, val_meter, cur_epoch, cfg, device, writer)
                v = stats["val"]
                logger.info(f"Val epoch {cur_epoch + 1}: top-1 err {v['top1_err']:.2f}% (best {v['min_top1_err']:.2f}%), top-5 err {v['top5_err']:.2f}%")
            curves.write_curves(cfg.OUTPUT_DIR)  # OUTPUT_DIR/curves.png from json_stats.log (rank 0)
            du.barrier()
    finally:
        if writer is not None:
            writer.close()
    return stats
