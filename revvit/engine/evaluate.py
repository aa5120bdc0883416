"""Scoring a model on a split: the per-clip validation of training epochs, and the multi-view test.

``eval_epoch`` reports the top-1 / top-5 error of each clip of the val split, each sample once.
``evaluate`` tests a checkpoint: ensemble the views of each sample, report top-1 / top-5.

Each sample (a video, or an image with one view) is seen as several views (temporal clips x
spatial crops); the model gives logits, ``scores`` turns them into MODEL.HEAD_ACT's scores (softmax:
probabilities), and the views of a sample are combined by DATA.ENSEMBLE_METHOD (sum, as PySlowFast,
or max). Every process tests its share of
the views; predictions are gathered so that rank 0 scores the whole split.
"""

import csv
import io
import os

import torch
from torch.utils.data import DistributedSampler

from revvit.datasets import BadSampleCounter, construct_loader, drop_invalid, report_bad_samples
from revvit.utils import checkpoint as cu
from revvit.utils import distributed as du
from revvit.utils import logging
from revvit.utils.errors import UserError
from revvit.utils.meters import TestMeter, progress
from revvit.utils.metrics import topks_correct

from . import preemption, run_dir
from .precision import autocast
from .runtime import build_run
from .stall import batches
from .transfer import to_device
from .weights import start_weights

logger = logging.get_logger(__name__)

__all__ = [
    "NonFiniteScoresError",
    "check_finite_scores",
    "eval_epoch",
    "evaluate",
    "perform_test",
    "predict_readable",
    "save_results",
    "scores",
]


class NonFiniteScoresError(UserError):
    """The model's scores are NaN or infinite: no accuracy computed from them is a result."""


_HEAD_ACTS = {"softmax": lambda x: x.softmax(dim=1), "sigmoid": torch.sigmoid, "none": lambda x: x}


def scores(logits, cfg):
    """MODEL.HEAD_ACT of a batch of logits: what testing combines over views and prediction ranks.

    The activation belongs to evaluation, not to the model, whose forward gives logits for training
    and for anyone who uses it as a timm model. Under autocast, softmax computes in float32.
    """
    return _HEAD_ACTS[cfg.MODEL.HEAD_ACT](logits)


def predict_readable(model, batch, cfg, device):
    """``(preds, labels, index, meta)`` of the batch's readable rows on ``device``: preds are their
    ``scores``, computed under the run's autocast and returned in float32; None when no row is left
    (every file unreadable, or only the padding repeats validation drops).

    The model is called with the input tensor, which gives logits (timm's convention), whatever
    PySlowFast's list convention returns.

    Such a rank still runs the forward under FSDP, on the batch as read, and discards it: the forward's
    all-gathers are collectives that the other ranks wait in.
    """
    inputs, labels, index, meta = to_device(drop_invalid(*batch), device)
    with autocast(cfg, device):
        if inputs[0].shape[0]:
            return scores(model(inputs[0]), cfg).float(), labels, index, meta
        if cfg.MODEL.FSDP and du.get_world_size() > 1:
            model(to_device(batch, device)[0][0])
    return None, labels, index, meta


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


def _views_layout(dataset):
    """(number of samples, views per sample) of a test split: videos x views, or images x 1."""
    num_samples = int(getattr(dataset, "num_videos", None) or len(dataset))
    if len(dataset) % num_samples:
        raise ValueError(f"test split of {len(dataset)} items is not a whole number of views of {num_samples} samples")
    return num_samples, len(dataset) // num_samples


def _view_ids(meta, batch_size, num_views):
    """View of each row: lets the meter count a view once when a distributed sampler repeats it."""
    if isinstance(meta, dict) and "view" in meta:
        return torch.as_tensor(meta["view"])
    if num_views == 1:  # images: the only view is view 0
        return torch.zeros(batch_size, dtype=torch.long)
    return None


@torch.no_grad()
def perform_test(loader, model, meter, cfg, device, stop=None):
    """Fill ``meter`` with the test split's predictions; returns it, or None when ``stop`` (a
    preemption.StopRequest) asks every rank to stop first."""
    model.eval()
    bad = BadSampleCounter()
    meter.iter_tic()
    for cur_iter, batch in enumerate(progress(batches(loader, cfg), "test", len(loader))):
        bad.update(batch[3])
        meter.data_toc()
        preds, labels, index, meta = predict_readable(model, batch, cfg, device)
        if preds is None:  # every sample of this batch was unreadable
            preds = torch.zeros((0, cfg.MODEL.NUM_CLASSES), device=device)
        view = _view_ids(meta, preds.shape[0], meter.num_clips)
        gathered = [preds, labels, index] + ([view.to(device)] if view is not None else [])
        if du.get_world_size() > 1:
            gathered = [du.all_gather_unaligned(t) for t in gathered]
        meter.iter_toc()
        meter.update_stats(gathered[0], gathered[1], gathered[2], gathered[3] if view is not None else None)
        meter.log_iter_stats(cur_iter)
        meter.iter_tic()
        if stop is not None and stop.should_stop():
            return None
    report_bad_samples(bad, "test", -1)
    return meter


def save_results(meter, path):
    """Per-sample ensembled scores: CSV (index, label, prediction, score, views) or a torch file of tensors."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    seen = (meter.clip_count > 0).nonzero().flatten()
    scores = meter.video_preds[seen]
    labels = meter.video_labels[seen]
    if path.endswith(".csv"):
        top = scores.argmax(dim=1)
        text = io.StringIO(newline="")
        w = csv.writer(text)
        w.writerow(["index", "label", "prediction", "score", "views"])
        for i, v in enumerate(seen.tolist()):
            w.writerow([v, int(labels[i]), int(top[i]), f"{float(scores[i, top[i]]):.6f}", int(meter.clip_count[v])])
        cu.atomic_write(path, lambda f: f.write(text.getvalue().encode()))
    else:
        results = {"index": seen, "labels": labels, "scores": scores, "views": meter.clip_count[seen]}
        cu.atomic_write(path, lambda f: torch.save(results, f))
    return path


def check_finite_scores(meter, path):
    """Raise NonFiniteScoresError when a sample's ensembled scores are not finite: the top-1 of NaN
    scores is whatever class argmax falls on, an accuracy that means nothing."""
    seen = (meter.clip_count > 0).nonzero().flatten()
    bad = seen[~torch.isfinite(meter.video_preds[seen]).all(dim=1)]
    if len(bad):
        raise NonFiniteScoresError(
            f"Testing {path} gave scores that are not finite (NaN or inf) for {len(bad)} of {len(seen)} samples "
            f"(the first: sample {int(bad[0])}), so no accuracy is reported. The weights are finite, so the model "
            "overflowed on these inputs: test in float32 (TRAIN.MIXED_PRECISION False), or use an earlier checkpoint "
            "of the run if it was diverging."
        )


def evaluate(cfg):
    """Test a checkpoint on the test split; returns the final stats (top1_acc, top5_acc in percent).

    The job holds OUTPUT_DIR while it tests (``run_dir.claimed``): a training run in the same folder
    would change the checkpoints under it.
    """
    with run_dir.claimed(cfg, "test"):
        return _evaluate_in_claimed_dir(cfg)


def _evaluate_in_claimed_dir(cfg):
    model, device = build_run(cfg, config_name="config_test.yaml")
    run_dir.log_notes()
    path = start_weights(cfg, "test").path
    cu.load_checkpoint(path, model, clear_name_patterns=cfg.TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN)
    logger.info(f"Testing {path}")

    loader = construct_loader(cfg, "test")
    num_samples, num_views = _views_layout(loader.dataset)
    meter = TestMeter(num_samples, num_views, cfg.MODEL.NUM_CLASSES, len(loader), cfg.DATA.ENSEMBLE_METHOD, cfg.LOG_PERIOD)
    with preemption.handling(cfg) as stop:
        if perform_test(loader, model, meter, cfg, device, stop) is None:
            again = "TRAIN.ENABLE False" if cfg.TRAIN.ENABLE else "the same command"
            raise stop.stopped(f"during the test of {path}; no test result was written. Test it with {again}.", stop.agreed_signum)
    check_finite_scores(meter, path)  # every rank holds the gathered scores: all stop alike
    stats = meter.finalize_metrics(output_dir=cfg.OUTPUT_DIR if du.is_master_proc() else None)
    logger.info(f"Test: top-1 {stats['top1_acc']:.2f}%  top-5 {stats['top5_acc']:.2f}% over {stats['num_samples']} samples x {num_views} views")
    if cfg.TEST.SAVE_RESULTS_PATH and du.is_master_proc():
        out = os.path.join(cfg.OUTPUT_DIR, cfg.TEST.SAVE_RESULTS_PATH)
        logger.info(f"Per-sample predictions written to {save_results(meter, out)}")
    return stats
