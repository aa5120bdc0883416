"""The job-wide count of unreadable samples an epoch skipped, told once by rank 0."""

import torch

from revvit.utils import distributed as du
from revvit.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["report_bad_samples"]


def report_bad_samples(counter, split, cur_epoch):
    """Warn (rank 0) with the job-wide number of skipped files; returns that number."""
    total = int(du.all_reduce([torch.tensor(float(counter.count))], average=False)[0].item())
    msg = counter.summary(split, cur_epoch + 1, count=total)
    if msg and du.is_master_proc():
        logger.warning(msg)
    counter.reset()
    return total
