"""Training: epochs of mixed-precision steps, periodic evaluation and checkpoints, exact resume.

Reproducibility is designed in: every epoch starts by reseeding python, numpy and torch from
(RNG_SEED, epoch, rank) and the data order depends only on the epoch, so a run resumed from the
checkpoint of epoch N continues exactly as the uninterrupted run would have, on the same hardware.
"""

import time
from dataclasses import dataclass, replace

import torch

from revvit.datasets import BadSampleCounter, construct_loader, device_batches, report_bad_samples, shuffle_dataset
from revvit.solver import build_optimizer, get_lr_at_epoch, keep_implementation, set_lr
from revvit.utils import checkpoint as cu
from revvit.utils import curves
from revvit.utils import distributed as du
from revvit.utils import logging
from revvit.utils.meters import TrainMeter, ValMeter, progress
from revvit.utils.seeding import epoch_seed, seed_all

from . import preemption, resume, run_dir, sharding
from .ddp import wrap_ddp
from .evaluate import eval_epoch
from .losses import build_loss
from .precision import precision
from .runtime import build_run
from .stall import batches
from .step import LossGuard, StepStats, train_step
from .transfer import to_device
from .weights import resume_or_init

logger = logging.get_logger(__name__)

__all__ = ["train"]
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
    start = resume_or_init(cfg, model, optimizer, scaler)
    keep_implementation(optimizer)  # fused on this device, whatever device the checkpoint came from
    if not cfg.MODEL.FSDP:
        model = wrap_ddp(model, device, cfg.MODEL.FP16_ALLREDUCE)
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
