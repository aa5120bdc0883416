"""Bad input files: the error a reader raises, the retry policy, and the per-epoch tally.

Real data sets of a million files always hold a few broken ones (truncated downloads, missing
files, videos shorter than a clip). One of them must not end a multi-day run, and none of them may
disappear silently either. So readers turn every failure into a ``BadSampleError`` naming the file,
``fetch_with_retries`` logs it and, in training, substitutes another sample; each item then tells
in its ``meta`` how many files were skipped to produce it, and ``BadSampleCounter`` sums these over
an epoch. Counting through the items (rather than a counter inside the data set) is what makes the
total right with DataLoader workers, which are separate processes.

Evaluation never substitutes: another video's clip would corrupt the per-video ensemble. A failed
val/test item comes back as a zero placeholder with ``meta["valid"] = False`` so the evaluator
drops it (``revvit.datasets.loader.drop_invalid``) and knows exactly which sample failed.
"""

import logging
import random

import torch

from revvit.utils import distributed as du
from revvit.utils.errors import UserError

__all__ = ["BadSampleCounter", "BadSampleError", "UnreadableDataError", "fetch_with_retries", "report_bad_samples"]

logger = logging.getLogger(__name__)


class BadSampleError(Exception):
    """A file that cannot give a sample: missing, unreadable, corrupt or too short."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class UnreadableDataError(UserError, RuntimeError):
    """Every try of one training item failed: DATA_LOADER.NUM_RETRIES + 1 files in a row were bad."""


def fetch_with_retries(load, index, num_items, substitute, num_retries):
    """``load(index)``; on a bad file, log it and (if ``substitute``) try random other samples.

    Returns ``(item, skipped_paths)``; ``item`` is None when the sample failed and ``substitute``
    is False. Only after ``num_retries`` substitutes in a row also fail does it raise: at that
    point the data, not one file, is broken, and carrying on would train on nothing.
    """
    skipped = []
    for attempt in range(num_retries + 1):
        try:
            return load(index), skipped
        except BadSampleError as err:
            logger.warning("Skipping bad sample %d: %s", index, err)
            skipped.append(err.path)
            if not substitute:
                return None, skipped
            index = random.randrange(num_items)
    shown = ", ".join(skipped[-3:])
    raise UnreadableDataError(
        f"{len(skipped)} training file(s) in a row could not be read ({shown}; the reasons are logged above), "
        f"and DATA_LOADER.NUM_RETRIES {num_retries} allows no more substitutes for one sample. If only these "
        "files are bad, remove them or raise DATA_LOADER.NUM_RETRIES; if every file fails the same way, check "
        "DATA.PATH_TO_DATA_DIR and the files' format."
    )


class BadSampleCounter:
    """Sums the files skipped during one epoch from the ``meta`` of each batch.

    Usage in a training or evaluation loop::

        counter = BadSampleCounter()
        for inputs, labels, index, meta in loader:
            counter.update(meta)
            ...
        # with several processes: all-reduce (sum) counter.count first
        msg = counter.summary("train", epoch)
        if msg: logger.warning(msg)
        counter.reset()
    """

    def __init__(self, max_paths=20):
        self.max_paths = max_paths
        self.reset()

    def reset(self):
        self.count = 0
        self._paths = {}

    def update(self, meta):
        """Add a batch's ``meta`` (or one item's: plain ints are fine too)."""
        skipped = meta["skipped"]
        self.count += int(skipped.sum()) if hasattr(skipped, "sum") else int(skipped)
        for path in meta["skipped_paths"]:
            self._paths[path] = self._paths.get(path, 0) + 1

    @property
    def paths(self):
        """Distinct bad files seen by this process, in the order they were first met."""
        return list(self._paths)

    def summary(self, split, epoch, count=None):
        """A one-paragraph report, or None when nothing was skipped.

        ``count`` overrides the local count (pass the all-reduced total in distributed runs; the
        path list stays this process's own).
        """
        total = self.count if count is None else int(count)
        if total == 0:
            return None
        shown = self.paths[: self.max_paths]
        more = len(self._paths) - len(shown)
        listing = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
        return (
            f"{split} epoch {epoch}: skipped {total} bad sample(s) (logged above with the reason); "
            f"files: {listing or 'see the log'}"
        )


def report_bad_samples(counter, split, cur_epoch):
    """Warn (rank 0) with the job-wide number of files ``counter`` skipped in the epoch; returns that number."""
    total = int(du.all_reduce([torch.tensor(float(counter.count))], average=False)[0].item())
    msg = counter.summary(split, cur_epoch + 1, count=total)
    if msg and du.is_master_proc():
        logger.warning(msg)
    counter.reset()
    return total
