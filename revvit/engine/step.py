"""One optimisation step, queued on the device, and the guard that keeps a bad step from the weights.

``train_step`` runs forward, backward, clipping and the update under the run's autocast; its
job-wide stats (loss, top-1/top-5 error, gradient norm) stay on the device until ``StepStats.read``,
so the device never waits for the host. ``LossGuard`` judges each step there, and a bad one skips
the optimizer update: a NaN or exploded loss never reaches the weights.
"""

import math

import torch
from torch.nn.parallel import DistributedDataParallel

from revvit.utils import distributed as du
from revvit.utils.errors import UserError
from revvit.utils.metrics import topks_correct

from . import sharding
from .precision import autocast

__all__ = ["LossExplosionError", "LossGuard", "NonFiniteLossError", "StepStats", "train_step"]


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
