"""Training: epochs of mixed-precision steps, periodic evaluation and checkpoints, exact resume.

Reproducibility is designed in: every epoch starts by reseeding python, numpy and torch from
(RNG_SEED, epoch, rank) and the data order depends only on the epoch, so a run resumed from the
checkpoint of epoch N continues exactly as the uninterrupted run would have, on the same hardware.
"""

import math
import time
from dataclasses import dataclass, replace

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from revvit.datasets import BadSampleCounter, construct_loader, device_batches, shuffle_dataset
from revvit.solver import build_optimizer, get_lr_at_epoch, keep_implementation, set_lr
from revvit.utils import checkpoint as cu
from revvit.utils import curves
from revvit.utils import distributed as du
from revvit.utils import logging
from revvit.utils.errors import UserError
from revvit.utils.meters import TrainMeter, ValMeter, progress
from revvit.utils.metrics import topks_correct

from . import preemption, resume, run_dir, sharding
from .losses import build_loss
from .bad_samples import report_bad_samples
from .evaluate import predict_readable
from .precision import autocast, precision
from .runtime import build_run, epoch_seed, seed_all
from .stall import batches
from .transfer import to_device
from .weights import start_weights

logger = logging.get_logger(__name__)

__all__ = ["LossExplosionError", "LossGuard", "NonFiniteLossError", "StepStats", "train", "train_step"]


class NonFiniteLossError(UserError, FloatingPointError):
    """The loss (or, without loss scaling, the gradient norm) became NaN or infinite; training stops
    with the weights of the step before."""


class LossExplosionError(UserError):
    """The loss is finite but TRAIN.KILL_LOSS_EXPLOSION_FACTOR times above its recent mean."""


class LossGuard:
    """Judges every step on the device, so that a bad one never reaches the weights and no step waits for the host.

    A step is bad when its job-wide loss is not finite; when its gradient norm is not finite and no
    GradScaler is in charge (with one, an overflow is the scaler's to skip and recover from); or when its
    loss is ``factor`` (TRAIN.KILL_LOSS_EXPLOSION_FACTOR; 0: off) times above the mean of the last
    ``window`` losses. The window holds job-wide (all-reduced) losses, on the device; it does not depend
    on LOG_PERIOD (the meters' window) nor on epoch boundaries, and it watches from the second iteration
    on. After a resume it starts empty: the first iteration of a resumed run is not compared.

    ``halted`` turns on at a bad step and stays on: train_step hands it to the optimizer as a found-inf
    flag, so that step and every later one leave the weights and the optimizer state as they were, until
    the host reads the bad step's stats and raises (StepStats.read, one step later in the training loop).
    Every process holds the same losses and gradient norm, so all of them skip the same steps and raise
    at the same read.
    """

    def __init__(self, factor, window=5):
        self.factor = factor
        self.window = window
        self.seen = 0  # losses added so far; the host knows it without reading the device
        self.recent = None  # float64 device ring of the last ``window`` losses
        self.halted = None  # device bool

    def observe(self, loss, grad_norm, scaled):
        """Judge a step: returns (bad, window mean, window length), the first two as device tensors (the
        mean is NaN while nothing is compared), and adds ``loss`` (a float64 device scalar) to the window."""
        if self.recent is None:
            self.recent = torch.zeros(self.window, dtype=torch.float64, device=loss.device)
            self.halted = torch.zeros((), dtype=torch.bool, device=loss.device)
        bad = ~torch.isfinite(loss)
        if not scaled:
            bad = bad | ~torch.isfinite(grad_norm)
        count = min(self.seen, self.window)
        mean = torch.full((), float("nan"), dtype=torch.float64, device=loss.device)  # a fill kernel: no copy
        if self.factor > 0 and count:
            mean = self.recent[:count].mean()
            bad = bad | (loss > self.factor * mean)
        self.recent[self.seen % self.window].copy_(loss)
        self.seen += 1
        torch.logical_or(self.halted, bad, out=self.halted)
        return bad, mean, count


def _grad_norm_and_clip(model, cfg, device):
    """The gradients' L2 norm before clipping (what we want to watch), as a device tensor; clips in place."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return torch.zeros((), device=device)
    norm = sharding.total_grad_norm([p.grad for p in params])
    if cfg.SOLVER.CLIP_GRAD_L2NORM:
        torch.nn.utils.clip_grads_with_norm_(params, cfg.SOLVER.CLIP_GRAD_L2NORM, norm)
    elif cfg.SOLVER.CLIP_GRAD_VAL:
        torch.nn.utils.clip_grad_value_(params, cfg.SOLVER.CLIP_GRAD_VAL)
    return norm


def _job_stats(preds, loss, labels, vote=0.0):
    """[loss, top-1 err, top-5 err, stop vote] of this step averaged over all processes: a float64 device
    tensor. ``vote`` (``StopRequest.local_vote``) rides along, so agreeing on a stop costs no collective.

    Reduced in float64: the sum of the processes' float32 losses is then exact, so the job-wide loss
    does not depend on the number of processes.
    """
    hard = labels if labels.ndim == 1 else labels.argmax(dim=1)  # mixup: the dominant class
    n = preds.shape[0]
    top1, top5 = (100.0 * (1.0 - c / n) for c in topks_correct(preds.detach(), hard, (1, 5)))
    device = loss.device
    vote = torch.full((), float(vote), dtype=torch.float64, device=device)  # a fill kernel: no host-to-device copy, no sync
    stats = torch.stack([loss.detach().double(), top1.to(device).double(), top5.to(device).double(), vote])
    return du.all_reduce([stats])[0]


def _step_unless(optimizer, scaler, skip):
    """``optimizer.step()`` unless ``skip`` (a device bool), without reading it where torch allows.

    torch's fused optimizers (what build_optimizer gives on CUDA) take a found-inf flag on the device, as
    a GradScaler hands them its overflow flag: the kernel then leaves the parameters and moments as they
    were and the step counts are taken back. With a GradScaler, ``skip`` joins the scaler's own flag (its
    scale then backs off too, which no longer matters: the run is about to stop). An optimizer without
    that input (the for-each and per-parameter paths torch keeps for the CPU) reads ``skip``, as
    GradScaler reads its flag for them: on the CPU that waits for nothing.
    """
    if scaler.is_enabled():
        for found in scaler._found_inf_per_device(optimizer).values():  # filled by unscale_, read by step
            torch.maximum(found, skip.to(found), out=found)
        scaler.step(optimizer)
    elif getattr(optimizer, "_step_supports_amp_scaling", False):  # fused: the attribute GradScaler.step sets
        optimizer.found_inf = skip.float()
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif not skip.item():
        optimizer.step()


class StepStats:
    """One step's job-wide numbers on their way to the host.

    On CUDA they are copied to pinned memory behind the step's kernels, and an event marks their
    arrival; ``read()`` waits on that event only, and the training loop calls it once the next step is
    queued, so the device always has work while the host waits. ``read()`` returns (loss, top1_err,
    top5_err, grad_norm), passes the stop vote to ``stop.agree``, and raises NonFiniteLossError or
    LossExplosionError for a step its LossGuard judged bad (whose update, and every later one, was skipped).
    """

    _FIELDS = ("loss", "top1", "top5", "vote", "grad_norm", "mean", "bad")

    def __init__(self, values, where, factor, count, scaled, stop=None):
        self.where, self._factor, self._count, self._scaled, self._stop = where, factor, count, scaled, stop
        self._ready, self._result = None, None
        if values.device.type == "cuda":
            self._host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            self._host.copy_(values, non_blocking=True)
            self._ready = torch.cuda.Event()
            self._ready.record(torch.cuda.current_stream(values.device))
        else:
            self._host = values

    def read(self):
        if self._result is None:
            if self._ready is not None:
                self._ready.synchronize()  # this step's end; later steps stay queued
            v = dict(zip(self._FIELDS, self._host.tolist()))
            if self._stop is not None:
                self._stop.agree(v["vote"])
            if v["bad"]:
                raise self._error(v)
            self._result = (v["loss"], v["top1"], v["top5"], v["grad_norm"])
        return self._result

    def _error(self, v):
        at = f"at epoch {self.where[0] + 1}, iteration {self.where[1] + 1}"
        if not math.isfinite(v["loss"]) or (not self._scaled and not math.isfinite(v["grad_norm"])):
            what = f"loss is {v['loss']}" if not math.isfinite(v["loss"]) else f"gradient norm is {v['grad_norm']} (the loss {v['loss']:.4g})"
            return NonFiniteLossError(
                f"The training {what} {at}. Stopped before this step changed the weights. Lower SOLVER.BASE_LR, "
                "lengthen SOLVER.WARMUP_EPOCHS, set SOLVER.CLIP_GRAD_L2NORM, or turn off TRAIN.MIXED_PRECISION; then "
                "resume from the last checkpoint."
            )
        return LossExplosionError(
            f"The training loss exploded {at}: {v['loss']:.4g} is more than TRAIN.KILL_LOSS_EXPLOSION_FACTOR "
            f"{self._factor:g} x {v['mean']:.4g}, the mean of the previous {self._count} iterations. Stopped before "
            "this step changed the weights. Lower SOLVER.BASE_LR, lengthen SOLVER.WARMUP_EPOCHS or set "
            "SOLVER.CLIP_GRAD_L2NORM; then resume from the last checkpoint."
        )


def train_step(model, optimizer, scaler, loss_fn, inputs, labels, cfg, device, loss_guard=None, where=(0, 0), stop=None):
    """One optimisation step, queued on the device; returns its StepStats, whose ``read()`` gives (loss,
    top1_err, top5_err, grad_norm) averaged over all processes.

    Nothing here waits for the device: the job-wide stats are all-reduced on it, ``loss_guard`` (a
    LossGuard; a fresh one without explosion check when None) judges the step on it and a bad step skips
    the optimizer update there, so a bad loss never reaches the weights. ``where``: (epoch, iteration),
    0-based, for the messages. ``stop`` (a preemption.StopRequest): its vote joins the stats, and the
    agreed answer is recorded, when they are read, for the ``should_stop()`` that follows.
    """
    guard = loss_guard if loss_guard is not None else LossGuard(0.0)
    with autocast(cfg, device):
        preds = model(inputs)
        loss = loss_fn(preds, labels)
    stats = _job_stats(preds, loss, labels, stop.local_vote() if stop is not None else 0.0)
    # Under DDP the gradients are views into its buckets (gradient_as_bucket_view): zeroed in place, they
    # stay so, and autograd accumulates straight into the buckets. Set to None, each backward would
    # allocate a fresh gradient per parameter that DDP copies into its bucket before pointing .grad back.
    optimizer.zero_grad(set_to_none=not isinstance(model, DistributedDataParallel))
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grad_norm = _grad_norm_and_clip(model, cfg, device).detach().to(stats.device, torch.float64)
    bad, mean, count = guard.observe(stats[0], grad_norm, scaler.is_enabled())
    _step_unless(optimizer, scaler, guard.halted)
    scaler.update()
    values = torch.cat([stats, torch.stack([grad_norm, mean, bad.double()])])
    return StepStats(values, where, guard.factor, count, scaler.is_enabled(), stop)


@dataclass(frozen=True)
class _Taken:
    """A step taken by the epoch loop, its stats not read yet."""

    stats: StepStats
    iteration: int
    lr: float
    batch: int  # the global batch: the stats are job-wide


class _StopAt(Exception):
    """Every rank agreed to stop after ``iteration`` steps of the epoch (a signal; see preemption.py)."""

    def __init__(self, iteration, signum):
        super().__init__(iteration, signum)
        self.iteration, self.signum = iteration, signum


def _log_step(writer, step, loss, lr, top1, top5, grad_norm):
    if writer is not None:
        writer.add_scalars(
            {"Train/loss": loss, "Train/lr": lr, "Train/Top1_err": top1, "Train/Top5_err": top5, "Train/grad_norm": grad_norm},
            global_step=step,
        )


def _real_samples(loader):
    """How many of this process's val samples are real: DistributedSampler pads the split with
    repeats of its first samples so every rank gets as many; those repeats come last on each rank."""
    sampler = loader.sampler
    if not isinstance(sampler, DistributedSampler) or sampler.drop_last:
        return len(loader.dataset)
    return (len(loader.dataset) - sampler.rank + sampler.num_replicas - 1) // sampler.num_replicas


@torch.no_grad()
def eval_epoch(loader, model, meter, cur_epoch, cfg, device, writer=None, stop=None):
    """Per-clip top-1/top-5 error on the val split, each sample counted once (the multi-view test is evaluate()).

    Returns None when ``stop`` (a preemption.StopRequest) asks every rank to stop before the end.
    """
    model.eval()
    bad = BadSampleCounter()
    real, seen = _real_samples(loader), 0
    meter.iter_tic()
    for cur_iter, batch in enumerate(progress(batches(loader, cfg), f"val {cur_epoch + 1}", len(loader))):
        bad.update(batch[3])
        rows = len(batch[1])
        batch[3]["valid"] = batch[3]["valid"] & (torch.arange(seen, seen + rows) < real)  # padding repeats: drop
        seen += rows
        meter.data_toc()
        preds, labels, _, _ = predict_readable(model, batch, cfg, device)
        if preds is None:  # every sample of this batch was unreadable, or a padding repeat
            c1 = c5 = torch.zeros((), device=device)
            n = 0
        else:
            c1, c5 = topks_correct(preds, labels, (1, 5))
            n = preds.shape[0]
        counts = du.all_reduce([torch.stack([c1.float(), c5.float(), torch.full((), float(n), device=c1.device)])], average=False)[0]
        c1, c5, n = counts.tolist()
        if n > 0:
            meter.update_stats(100.0 * (1 - c1 / n), 100.0 * (1 - c5 / n), int(n))
        meter.iter_toc()
        meter.log_iter_stats(cur_epoch, cur_iter)
        meter.iter_tic()
        if stop is not None and stop.should_stop():
            meter.reset()
            return None
    report_bad_samples(bad, "val", cur_epoch)
    stats = meter.log_epoch_stats(cur_epoch)
    if writer is not None:
        writer.add_scalars({"Val/Top1_err": stats["top1_err"], "Val/Top5_err": stats["top5_err"]}, global_step=cur_epoch)
    meter.reset()
    return stats


def _wrap_ddp(model, device, fp16_allreduce=False):
    """DDP with every parameter used in every step (no find_unused_parameters: each RevBackProp node
    accumulates the gradients of its block's parameters, so DDP's hooks all fire, block by block)."""
    if du.get_world_size() == 1:
        return model
    # gradient_as_bucket_view: the .grad tensors are views into DDP's buckets, saving a copy and a
    # gradient-sized buffer per step, as long as they are zeroed in place (train_step), never set to None.
    if device.type == "cuda":
        model = DistributedDataParallel(model, device_ids=[device.index], output_device=device.index, gradient_as_bucket_view=True)
    else:
        model = DistributedDataParallel(model, gradient_as_bucket_view=True)
    if fp16_allreduce:  # MODEL.FP16_ALLREDUCE: halve the gradient traffic
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        model.register_comm_hook(state=None, hook=default_hooks.fp16_compress_hook)
    return model


@dataclass(frozen=True)
class _Position:
    """Where training starts: 0-based epoch, iterations of it already done, and the ranks' RNG states."""

    epoch: int
    iteration: int = 0
    resume_state: dict = None


def _load(path, model, optimizer=None, scaler=None, **kwargs):
    return cu.load_checkpoint(path, model, optimizer, scaler, set_states=sharding.set_full_states, **kwargs)


def _log_config_changes(saved_cfg, cfg, path):
    """Say which settings a resume changes: the run continues with this config, not the checkpoint's."""
    try:
        changes = run_dir.config_changes(saved_cfg, cfg.dump()) if saved_cfg else []
    except yaml.YAMLError:
        return
    if changes:
        logger.info(f"The config differs from the one {path} was trained with: {run_dir.describe_changes(changes)}")


def _resume_or_init(cfg, model, optimizer, scaler):
    """The position to start from: the run's own newest checkpoint (AUTO_RESUME), else initial weights.

    A mid-epoch position carries the checkpoint's record with the samples of the epoch consumed;
    ``iteration`` is the saved run's count until ``resume.first_iteration`` renumbers it for this
    job's batches (the loader is built later).
    """
    start = start_weights(cfg, "train")
    if start.resume:
        info = _load(start.path, model, optimizer, scaler)
        _log_config_changes(info["cfg"], cfg, start.path)
        if info["iteration"]:
            state = resume.with_samples(info["resume_state"], info["iteration"], info["cfg"])
            logger.info(
                f"Resuming from {start.path} (epoch {info['epoch'] + 2}, after iteration {info['iteration']}): "
                f"{state['samples']} samples of the epoch trained"
            )
            return _Position(info["epoch"] + 1, info["iteration"], state)
        logger.info(f"Resuming from {start.path} (epoch {info['epoch'] + 1} of {cfg.SOLVER.MAX_EPOCH} done)")
        return _Position(info["epoch"] + 1)
    if not start.path:
        return _Position(0)
    return _Position(_initialise(cfg, start, model, optimizer, scaler))


def _initialise(cfg, start, model, optimizer, scaler):
    """Load TRAIN.CHECKPOINT_FILE_PATH or MODEL.PRETRAINED; returns the epoch to start at."""
    path = start.path
    reset = cfg.TRAIN.CHECKPOINT_EPOCH_RESET or start.source == "MODEL.PRETRAINED"  # official weights: a new run
    info = _load(
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
    if info["epoch"] + 1 >= cfg.SOLVER.MAX_EPOCH:
        raise cu.CheckpointError(
            f"TRAIN.CHECKPOINT_FILE_PATH '{path}' was saved after epoch {info['epoch'] + 1} and SOLVER.MAX_EPOCH is "
            f"{cfg.SOLVER.MAX_EPOCH}, so this run would have nothing left to train. To train these weights on a new "
            "schedule from epoch 1, set TRAIN.CHECKPOINT_EPOCH_RESET True; to continue the old schedule, set "
            f"SOLVER.MAX_EPOCH above {info['epoch'] + 1}."
        )
    logger.info(
        f"Initialised from {path} (epoch {info['epoch'] + 1}); continuing at epoch {info['epoch'] + 2} of "
        f"{cfg.SOLVER.MAX_EPOCH}. Set TRAIN.CHECKPOINT_EPOCH_RESET True to start at epoch 1."
    )
    return info["epoch"] + 1


def _is_period_epoch(cfg, cur_epoch, period):
    return (cur_epoch + 1) % max(1, period) == 0 or cur_epoch + 1 == cfg.SOLVER.MAX_EPOCH


def _resume_hint(cfg, path):
    if cfg.TRAIN.AUTO_RESUME:
        return f"saved {path}; rerun the same command to resume from there."
    return f"saved {path}; rerun the same command with TRAIN.AUTO_RESUME True to resume from there."


class _Run:
    """What the epoch loop carries: the model and its optimizer state, loaders, meters, the stop request."""

    def __init__(self, cfg, model, optimizer, scaler, device, stop):
        self.cfg, self.model, self.optimizer, self.scaler, self.device, self.stop = cfg, model, optimizer, scaler, device, stop
        self.loss_fn = build_loss(cfg)
        self.loss_guard = LossGuard(cfg.TRAIN.KILL_LOSS_EXPLOSION_FACTOR)
        self.train_loader = construct_loader(cfg, "train")
        self.val_loader = construct_loader(cfg, "val") if cfg.TRAIN.EVAL_PERIOD > 0 else None
        self.train_meter = TrainMeter(len(self.train_loader), cfg)
        self.val_meter = ValMeter(len(self.val_loader), cfg) if self.val_loader is not None else None
        self.writer = logging.TensorboardWriter(cfg) if cfg.TENSORBOARD.ENABLE and du.is_master_proc() else None

    def save(self, finished_epoch, iteration=0, resume_state=None):
        """Checkpoint after ``finished_epoch`` (0-based; -1: none) and ``iteration`` steps of the next."""
        classes = getattr(self.train_loader.dataset, "classes", None)
        path = cu.save_checkpoint(
            self.cfg.OUTPUT_DIR, self.model, self.optimizer, finished_epoch, self.cfg, self.scaler, class_names=classes,
            iteration=iteration, resume_state=resume_state, states=sharding.full_states,
        )
        logger.info(f"Saved {path}")
        return path

    def train_epoch(self, cur_epoch, start):
        """One epoch of steps from iteration ``start.iteration`` (0 unless resuming mid-epoch); returns its stats.

        Each step's stats are read once the next step is queued (the device never waits for the host),
        so a bad step raises, and a stop request is answered, one step later; the epoch's last step is
        read at its end. When the ranks agree to stop before the epoch's last step, the step just taken
        is read too and ``_StopAt`` is raised there, before the loader reads the next batch.
        """
        cfg, model, optimizer, device = self.cfg, self.model, self.optimizer, self.device
        meter, loader = self.train_meter, self.train_loader
        model.train()
        bad = BadSampleCounter()
        data_size = len(loader)
        first = start.iteration if start is not None else 0

        def count(taken, values):
            """Meters and logs of one read step."""
            loss, top1, top5, grad_norm = values
            meter.update_stats(top1, top5, loss, taken.lr, grad_norm, taken.batch)
            _log_step(self.writer, data_size * cur_epoch + taken.iteration, loss, taken.lr, top1, top5, grad_norm)
            meter.log_iter_stats(cur_epoch, taken.iteration)

        pending = None
        meter.iter_tic()
        desc = f"epoch {cur_epoch + 1}/{cfg.SOLVER.MAX_EPOCH}"
        with resume.positioned(loader, lambda l: batches(l, cfg), first, start and start.resume_state) as it:
            train_batches = device_batches(it, cfg, device, cur_epoch, du.get_rank(), first)  # AUG.ON_DEVICE
            for cur_iter, batch in enumerate(progress(train_batches, desc, data_size - first), start=first):
                bad.update(batch[3])
                inputs, labels, _, _ = to_device(batch, device)
                lr = get_lr_at_epoch(cfg, cur_epoch + cur_iter / data_size)
                set_lr(optimizer, lr)
                meter.data_toc()
                step = train_step(
                    model, optimizer, self.scaler, self.loss_fn, inputs, labels, cfg, device, self.loss_guard,
                    (cur_epoch, cur_iter), self.stop,
                )
                taken = _Taken(step, cur_iter, lr, inputs[0].shape[0] * du.get_world_size())
                values = pending.stats.read() if pending is not None else None  # the previous step, while this one runs
                meter.iter_toc()
                if pending is not None:
                    count(pending, values)
                    signum = self.stop.should_stop()  # agreed in read(): no collective
                    if signum and cur_iter + 1 < data_size:  # after the last step the epoch ends as usual
                        count(taken, step.read())  # the checkpoint holds this step: guard and log it first
                        raise _StopAt(cur_iter + 1, signum)
                meter.iter_tic()
                pending = taken
        if pending is not None:
            count(pending, pending.stats.read())
            self.stop.should_stop()  # its vote is answered by the epoch's end, which asks again
        stats = meter.log_epoch_stats(cur_epoch, {"bad_samples": report_bad_samples(bad, "train", cur_epoch)})
        meter.reset()
        return stats

    def epoch(self, cur_epoch, start):
        """Train epoch ``cur_epoch``, then checkpoint and validate as the periods say; a stop saves and raises."""
        cfg = self.cfg
        seed_all(epoch_seed(cfg, cur_epoch, du.get_rank()))
        shuffle_dataset(self.train_loader, cur_epoch)
        timer = time.perf_counter()
        try:
            t = self.train_epoch(cur_epoch, start)
        except _StopAt as s:
            done = start.resume_state if start is not None else None  # where a resumed epoch began
            samples = resume.samples_after(done, start.iteration if start is not None else 0, s.iteration, self.train_loader)
            order = done.get("order_world_size") if done is not None else None
            path = self.save(cur_epoch - 1, s.iteration, resume.capture(samples, order))
            du.barrier()  # no rank exits (and makes the launcher stop the others) before rank 0 has written it
            where = f"at epoch {cur_epoch + 1}, iteration {s.iteration} of {len(self.train_loader)}"
            raise self.stop.stopped(f"{where}: {_resume_hint(cfg, path)}", s.signum) from None
        logger.info(
            f"Epoch {cur_epoch + 1}/{cfg.SOLVER.MAX_EPOCH}: loss {t['loss']:.4f}, top-1 err {t['top1_err']:.2f}%, "
            f"lr {t['lr']:.3g}, {time.perf_counter() - timer:.1f} s, ETA {t['eta']}"
        )
        saved = self.save(cur_epoch) if _is_period_epoch(cfg, cur_epoch, cfg.TRAIN.CHECKPOINT_PERIOD) else None
        stats = {"train": t}
        if self.val_loader is not None and _is_period_epoch(cfg, cur_epoch, cfg.TRAIN.EVAL_PERIOD):
            v = eval_epoch(self.val_loader, self.model, self.val_meter, cur_epoch, cfg, self.device, self.writer, self.stop)
            if v is not None:
                stats["val"] = v
                logger.info(f"Val epoch {cur_epoch + 1}: top-1 err {v['top1_err']:.2f}% (best {v['min_top1_err']:.2f}%), top-5 err {v['top5_err']:.2f}%")
        curves.write_curves(cfg.OUTPUT_DIR)  # OUTPUT_DIR/curves.png from json_stats.log (rank 0)
        du.barrier()
        signum = self.stop.should_stop()
        if signum and cur_epoch + 1 < cfg.SOLVER.MAX_EPOCH:
            path = saved or self.save(cur_epoch)
            du.barrier()
            raise self.stop.stopped(f"after epoch {cur_epoch + 1} of {cfg.SOLVER.MAX_EPOCH}: {_resume_hint(cfg, path)}", signum)
        return stats


def _renumbered(start, loader):
    """``start`` with the iteration this job's batches resume at (another batch size or number of
    processes since the checkpoint changes it)."""
    if start.resume_state is None:
        return start
    first = resume.first_iteration(loader, start.resume_state)
    if first >= len(loader):  # no step left to end the epoch with its checkpoint and validation
        left = len(loader.dataset) - start.resume_state["samples"]
        raise cu.CheckpointError(
            f"The mid-epoch checkpoint of epoch {start.epoch + 1} leaves {left} of its samples, not one full batch of "
            f"{loader.batch_size} for each of {du.get_world_size()} process(es) (TRAIN.BATCH_SIZE), so the epoch could "
            "not end. Resume with the checkpoint's TRAIN.BATCH_SIZE (its config is the checkpoint's 'cfg') or a smaller one."
        )
    if first != start.iteration:
        logger.info(
            f"The checkpoint's {start.resume_state['samples']} samples were {start.iteration} iterations of its batches; "
            f"with {loader.batch_size} x {du.get_world_size()} process(es) the epoch continues with the next sample "
            f"at iteration {first + 1} of {len(loader)}"
        )
    return replace(start, iteration=first)


def train(cfg):
    """Train ``cfg`` in this process (one member of the job); returns the last epoch's stats.

    The job holds OUTPUT_DIR (``run_dir.claimed``) from before its first write to the end. SIGTERM,
    SIGUSR1 and SIGINT stop every rank at the next step boundary with a checkpoint to resume from
    (revvit.engine.preemption); the run then raises Interrupted with the signal's code.
    """
    with run_dir.claimed(cfg, "train"):
        return _train_in_claimed_dir(cfg)


def _train_in_claimed_dir(cfg):
    model, device = build_run(cfg)
    run_dir.log_notes()
    prec = precision(cfg, device)
    if cfg.MODEL.FSDP:  # before the optimizer is built: sharding replaces the parameters
        model = sharding.shard_model(model, device, prec.dtype)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=prec.use_scaler)
    start = _resume_or_init(cfg, model, optimizer, scaler)
    keep_implementation(optimizer)  # fused on this device, whatever device the checkpoint came from
    if not cfg.MODEL.FSDP:
        model = _wrap_ddp(model, device, cfg.MODEL.FP16_ALLREDUCE)
    stats = {}
    with preemption.handling(cfg) as stop:
        run = _Run(cfg, model, optimizer, scaler, device, stop)
        start = _renumbered(start, run.train_loader)
        if start.epoch >= cfg.SOLVER.MAX_EPOCH:
            logger.info(f"All {cfg.SOLVER.MAX_EPOCH} epochs are already done in {cfg.OUTPUT_DIR}; nothing to train")
        else:
            logger.info(f"Training epochs {start.epoch + 1}..{cfg.SOLVER.MAX_EPOCH}, {len(run.train_loader)} iterations each")
        try:
            for cur_epoch in range(start.epoch, cfg.SOLVER.MAX_EPOCH):
                resumed = cur_epoch == start.epoch and start.resume_state is not None  # mid-epoch
                stats = run.epoch(cur_epoch, start if resumed else None)
        finally:
            if run.writer is not None:
                run.writer.close()
    return stats
