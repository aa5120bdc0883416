"""Running statistics of training, validation and multi-view testing, and their log lines.

The meters only count and format; the engine decides what is measured (after all-reduce, so every
rank holds the same numbers) and when. Times come from fvcore's Timer, windows of recent values
(medians for the log lines) from fvcore's HistoryBuffer, the ETA from the mean iteration time over
the recent window times the iterations left in the whole run.
"""

import datetime
import sys

import psutil
import torch
from fvcore.common.history_buffer import HistoryBuffer
from fvcore.common.timer import Timer
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import distributed as du
from . import logging
from .metrics import topks_correct

logger = logging.get_logger(__name__)

__all__ = ["TrainMeter", "ValMeter", "TestMeter", "progress", "memory_stats"]


def progress(iterable, desc, total=None):
    """A progress bar on rank 0 when stdout is a terminal; the bare iterable otherwise.

    While the bar is shown, log lines are printed above it instead of through it.
    """
    if not (du.is_master_proc() and sys.stdout.isatty()):
        return iterable
    return _with_bar(iterable, desc, total)


def _with_bar(iterable, desc, total):
    import logging as std_logging

    with logging_redirect_tqdm(loggers=[std_logging.getLogger("revvit")]):
        with tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, file=sys.stdout) as bar:
            yield from bar


def memory_stats():
    """Peak CUDA memory of this process and host RAM in use / total, in GiB."""
    gpu = torch.cuda.max_memory_allocated() / 1024**3 if torch.cuda.is_available() else 0.0
    vm = psutil.virtual_memory()
    return {"gpu_mem": f"{gpu:.2f}G", "RAM": f"{(vm.total - vm.available) / 1024**3:.2f}/{vm.total / 1024**3:.2f}G"}


def _eta(seconds):
    return str(datetime.timedelta(seconds=int(max(0.0, seconds))))


class _Timed:
    """iter_tic / data_toc / iter_toc bookkeeping shared by all meters."""

    def _init_timers(self, window):
        self.iter_timer = Timer()
        self.data_timer = Timer()
        self.net_timer = Timer()
        self.time_window = window
        self.iter_times = HistoryBuffer(window)

    def mean_iter_time(self):
        """Mean seconds per iteration over the recent window (the ETA's rate)."""
        return float(self.iter_times.avg(self.time_window))

    def iter_tic(self):
        self.iter_timer.reset()
        self.data_timer.reset()

    def data_toc(self):
        self.data_timer.pause()
        self.net_timer.reset()

    def iter_toc(self):
        self.iter_timer.pause()
        self.net_timer.pause()
        self.iter_times.update(self.iter_timer.seconds())


class TrainMeter(_Timed):
    """Loss, errors, lr and grad norm of the training iterations of one epoch."""

    def __init__(self, epoch_iters, cfg):
        self._cfg = cfg
        self.epoch_iters = epoch_iters
        self.max_iters = cfg.SOLVER.MAX_EPOCH * epoch_iters
        self._init_timers(max(cfg.LOG_PERIOD, 20))
        self.reset()

    def reset(self):
        # Medians over the last LOG_PERIOD iterations smooth the per-iteration log lines.
        self.loss, self.mb_top1_err, self.mb_top5_err = (HistoryBuffer(self._cfg.LOG_PERIOD) for _ in range(3))
        self.loss_total = 0.0
        self.top1_mis = 0.0
        self.top5_mis = 0.0
        self.num_samples = 0
        self.lr = None
        self.grad_norm = None

    def update_stats(self, top1_err, top5_err, loss, lr, grad_norm, mb_size):
        """``mb_size`` is the global batch (all processes), since the stats are already reduced."""
        self.loss.update(loss)
        self.mb_top1_err.update(top1_err)
        self.mb_top5_err.update(top5_err)
        self.lr = lr
        self.grad_norm = grad_norm
        self.loss_total += loss * mb_size
        self.top1_mis += top1_err * mb_size
        self.top5_mis += top5_err * mb_size
        self.num_samples += mb_size

    def _median(self, buffer):
        return float(buffer.median(self._cfg.LOG_PERIOD))

    def eta_seconds(self, cur_epoch, cur_iter):
        done = cur_epoch * self.epoch_iters + cur_iter + 1
        return self.mean_iter_time() * (self.max_iters - done)

    def iter_stats(self, cur_epoch, cur_iter):
        return {
            "_type": "train_iter",
            "epoch": f"{cur_epoch + 1}/{self._cfg.SOLVER.MAX_EPOCH}",
            "iter": f"{cur_iter + 1}/{self.epoch_iters}",
            "dt": self.iter_timer.seconds(),
            "dt_data": self.data_timer.seconds(),
            "dt_net": self.net_timer.seconds(),
            "eta": _eta(self.eta_seconds(cur_epoch, cur_iter)),
            "loss": self._median(self.loss),
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "top1_err": self._median(self.mb_top1_err),
            "top5_err": self._median(self.mb_top5_err),
            **memory_stats(),
        }

    def log_iter_stats(self, cur_epoch, cur_iter):
        if (cur_iter + 1) % self._cfg.LOG_PERIOD != 0:
            return None
        stats = self.iter_stats(cur_epoch, cur_iter)
        logging.log_json_stats(stats)
        return stats

    def log_epoch_stats(self, cur_epoch, extra=None):
        n = max(self.num_samples, 1)
        stats = {
            "_type": "train_epoch",
            "epoch": f"{cur_epoch + 1}/{self._cfg.SOLVER.MAX_EPOCH}",
            "dt": self.mean_iter_time(),
            "eta": _eta(self.eta_seconds(cur_epoch, self.epoch_iters - 1)),
            "lr": self.lr,
            "grad_norm": self.grad_norm,
            "loss": self.loss_total / n,
            "top1_err": self.top1_mis / n,
            "top5_err": self.top5_mis / n,
            **memory_stats(),
            **(extra or {}),
        }
        logging.log_json_stats(stats, self._cfg.OUTPUT_DIR)
        return stats


class ValMeter(_Timed):
    """Per-clip top-1/top-5 error on the validation split, and the best seen so far."""

    def __init__(self, max_iter, cfg):
        self._cfg = cfg
        self.max_iter = max_iter
        self._init_timers(max(cfg.LOG_PERIOD, 20))
        self.min_top1_err = 100.0
        self.min_top5_err = 100.0
        self.reset()

    def reset(self):
        self.top1_mis = 0.0
        self.top5_mis = 0.0
        self.num_samples = 0

    def update_stats(self, top1_err, top5_err, mb_size):
        self.top1_mis += top1_err * mb_size
        self.top5_mis += top5_err * mb_size
        self.num_samples += mb_size

    def log_iter_stats(self, cur_epoch, cur_iter):
        if (cur_iter + 1) % self._cfg.LOG_PERIOD != 0:
            return None
        stats = {
            "_type": "val_iter",
            "epoch": f"{cur_epoch + 1}/{self._cfg.SOLVER.MAX_EPOCH}",
            "iter": f"{cur_iter + 1}/{self.max_iter}",
            "time_diff": self.iter_timer.seconds(),
            "eta": _eta(self.mean_iter_time() * (self.max_iter - cur_iter - 1)),
        }
        logging.log_json_stats(stats)
        return stats

    def log_epoch_stats(self, cur_epoch):
        n = max(self.num_samples, 1)
        top1, top5 = self.top1_mis / n, self.top5_mis / n
        self.min_top1_err = min(self.min_top1_err, top1)
        self.min_top5_err = min(self.min_top5_err, top5)
        stats = {
            "_type": "val_epoch",
            "epoch": f"{cur_epoch + 1}/{self._cfg.SOLVER.MAX_EPOCH}",
            "time_diff": self.iter_timer.seconds(),
            "top1_err": top1,
            "top5_err": top5,
            "min_top1_err": self.min_top1_err,
            "min_top5_err": self.min_top5_err,
            **memory_stats(),
        }
        logging.log_json_stats(stats, self._cfg.OUTPUT_DIR)
        return stats


class TestMeter(_Timed):
    """Ensembles the views of each sample (sum or max of scores) and scores the ensembles.

    Views are keyed by (sample index, view id) when a view id is known, so that a view seen twice
    (a distributed sampler pads the last batch by repeating samples) is counted once.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, num_videos, num_clips, num_classes, overall_iters, ensemble_method="sum", log_period=10):
        self.num_videos = num_videos
        self.num_clips = num_clips
        self.num_classes = num_classes
        self.overall_iters = overall_iters
        self.ensemble_method = ensemble_method
        self.log_period = log_period
        self._init_timers(20)
        self.video_preds = torch.zeros((num_videos, num_classes))
        self.video_labels = torch.full((num_videos,), -1, dtype=torch.long)
        self.clip_count = torch.zeros(num_videos, dtype=torch.long)
        self._seen = torch.zeros((num_videos, num_clips), dtype=torch.bool)  # [sample, view id] counted
        self.stats = {}

    def _first_views(self, video_idx, view_idx):
        """Mask of the rows whose (sample, view id) has not been counted, in this batch or before."""
        if view_idx is None:
            return torch.ones(len(video_idx), dtype=torch.bool)
        width = int(view_idx.max()) + 1 if len(view_idx) else 0
        if width > self._seen.shape[1]:  # more view ids than views expected: finalize_metrics warns
            self._seen = torch.nn.functional.pad(self._seen, (0, width - self._seen.shape[1]))
        unique, inverse = torch.unique(video_idx * self._seen.shape[1] + view_idx, return_inverse=True)
        first = torch.full((len(unique),), len(inverse)).scatter_reduce_(0, inverse, torch.arange(len(inverse)), "amin")
        fresh = first[~self._seen.view(-1)[unique]]
        self._seen.view(-1)[video_idx[fresh] * self._seen.shape[1] + view_idx[fresh]] = True
        take = torch.zeros(len(inverse), dtype=torch.bool)
        take[fresh] = True
        return take

    def update_stats(self, preds, labels, video_idx, view_idx=None):
        preds = preds.detach().float().cpu()
        labels = labels.detach().cpu().long()
        video_idx = video_idx.detach().cpu().long()
        outside = (video_idx < 0) | (video_idx >= self.num_videos)
        if outside.any():
            vid = int(video_idx[outside][0])
            raise IndexError(f"sample index {vid} outside the {self.num_videos} samples of the test split")
        take = self._first_views(video_idx, None if view_idx is None else view_idx.detach().cpu().long())
        preds, labels, video_idx = preds[take], labels[take], video_idx[take]
        # One label per sample: the smallest and largest label its views bring must equal the one it has.
        samples, inverse = torch.unique(video_idx, return_inverse=True)
        low = torch.zeros_like(samples).scatter_reduce_(0, inverse, labels, "amin", include_self=False)
        high = torch.zeros_like(samples).scatter_reduce_(0, inverse, labels, "amax", include_self=False)
        known = self.video_labels[samples]
        clash = ((low != high) | ((known >= 0) & (low != known))).nonzero().flatten()
        if len(clash):
            i = int(clash[0])
            first = int(known[i]) if known[i] >= 0 else int(low[i])
            other = int(high[i]) if first != int(high[i]) else int(low[i])
            raise ValueError(f"sample {int(samples[i])} has views with different labels ({first} and {other})")
        self.video_labels[samples] = low
        if self.ensemble_method == "sum":
            self.video_preds.index_add_(0, video_idx, preds)
        else:  # a sample's first view is its score so far, whatever its sign
            self.video_preds[video_idx[self.clip_count[video_idx] == 0]] = float("-inf")
            self.video_preds.scatter_reduce_(0, video_idx[:, None].expand_as(preds), preds, "amax")
        self.clip_count.index_add_(0, video_idx, torch.ones_like(video_idx))

    def log_iter_stats(self, cur_iter):
        if (cur_iter + 1) % self.log_period != 0:
            return None
        stats = {
            "split": "test_iter",
            "cur_iter": f"{cur_iter + 1}/{self.overall_iters}",
            "eta": _eta(self.mean_iter_time() * (self.overall_iters - cur_iter - 1)),
            "time_diff": self.iter_timer.seconds(),
        }
        logging.log_json_stats(stats)
        return stats

    def finalize_metrics(self, ks=(1, 5), output_dir=None):
        incomplete = (self.clip_count != self.num_clips).nonzero().flatten()
        if len(incomplete):
            shown = ", ".join(f"{int(i)}: {int(self.clip_count[i])}" for i in incomplete[:10])
            logger.warning(
                f"{len(incomplete)} of {self.num_videos} samples did not get exactly {self.num_clips} views "
                f"(index: views seen) {shown}{' ...' if len(incomplete) > 10 else ''}"
            )
        seen = self.clip_count > 0
        if not seen.any():
            raise RuntimeError("the test split produced no predictions")
        preds, labels = self.video_preds[seen], self.video_labels[seen]
        correct = topks_correct(preds, labels, ks)
        self.stats = {"split": "test_final", "num_samples": int(seen.sum())}
        for k, c in zip(ks, correct):
            self.stats[f"top{k}_acc"] = float(c) / preds.shape[0] * 100.0
        logging.log_json_stats(self.stats, output_dir)
        return self.stats
