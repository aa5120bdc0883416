"""Continuing an epoch where a mid-epoch checkpoint left it, to the same weights as an uninterrupted run.

Besides the weights and the optimizer, three things decide what the rest of an epoch does:

- the order of its samples, a function of (RNG_SEED, epoch, rank) (``shuffle_dataset``): the resumed
  run sets the epoch's order and skips the indices of the K batches already trained on (nothing is
  read), with or without loader workers;
- the data's random draws (crops, flips, RandAugment, Mixup, a bad file's substitute), a function of
  (RNG_SEED, epoch, sample index) (``revvit.datasets.seeding``): they do not depend on which process
  or worker reads a sample nor on what it read before, so persistent workers and skipped indices
  leave them as they were;
- training's own draws (drop path, dropout), the RNG states of every rank at the step boundary where
  the run stopped (python, numpy, torch, and CUDA when present), saved by ``capture`` and set again
  by ``restore``.
"""

import contextlib
import random

import numpy as np
import torch
import torch.distributed as dist

from revvit.utils import distributed as du
from revvit.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["capture", "positioned", "restore"]


def _rng_state():
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # this process's device
    return state


# Marks a record made since the data's draws are seeded per sample; a record without it was made
# when a resume replayed the loader's draws from the recorded (no workers) or re-read (workers) stream.
DATA_DRAWS = "per-sample"


def capture():
    """Every rank's RNG states, as a list indexed by rank (a collective: every rank calls it)."""
    mine = _rng_state()
    states = [mine]
    if du.get_world_size() > 1:
        states = [None] * du.get_world_size()
        dist.all_gather_object(states, mine)
    return {"world_size": du.get_world_size(), "rng": states, "data_draws": DATA_DRAWS}


def restore(resume_state):
    """Set this rank's RNG states from ``capture``'s record; False when the job's size changed."""
    if resume_state is None or resume_state.get("world_size") != du.get_world_size():
        return False
    s = resume_state["rng"][du.get_rank()]
    random.setstate(s["python"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])
    return True


class _Skip(torch.utils.data.Sampler):
    """The indices of ``sampler`` from position ``n`` on (drawn exactly as the full pass draws them)."""

    def __init__(self, sampler, n):
        self.sampler, self.n = sampler, n

    def __iter__(self):
        it = iter(self.sampler)
        for _ in range(self.n):
            next(it, None)
        yield from it

    def __len__(self):
        return max(0, len(self.sampler) - self.n)


@contextlib.contextmanager
def _skipping(loader, batches):
    batch_sampler = loader.batch_sampler
    inner = batch_sampler.sampler
    batch_sampler.sampler = _Skip(inner, batches * batch_sampler.batch_size)
    try:
        yield
    finally:
        batch_sampler.sampler = inner


@contextlib.contextmanager
def positioned(loader, make_iter, start_iter, resume_state):
    """``with positioned(...) as it``: the batches of this epoch from ``start_iter`` on, the RNG as it
    was at that step boundary.

    ``make_iter(loader)`` is how the training loop iterates a loader (``runtime.batches``). Enter after
    the epoch's order is set (``shuffle_dataset``); the loader is itself again on exit.
    """
    if not start_iter:
        yield make_iter(loader)
        return
    with _skipping(loader, start_iter):
        it = make_iter(loader)
        _restore_or_warn(resume_state)
        yield it


def _restore_or_warn(resume_state):
    if not restore(resume_state):
        logger.warning(
            "The checkpoint was saved by a job of another size (or without RNG states): the rest of this epoch "
            "continues from the same position with other random draws, so it will not match an uninterrupted run exactly."
        )
    elif resume_state.get("data_draws") != DATA_DRAWS:
        logger.warning(
            "The checkpoint was saved before the data's random draws were seeded per sample: the rest of this epoch "
            "continues from the same position with other augmentations, so it will not match the run that saved it exactly."
        )
