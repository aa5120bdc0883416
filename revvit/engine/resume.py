"""Continuing an epoch where a mid-epoch checkpoint left it, to the same weights as an uninterrupted run.

Besides the weights and the optimizer, three things decide what the rest of an epoch does:

- the order of its samples, a function of (RNG_SEED, epoch, rank) (``shuffle_dataset``): the resumed
  run sets the epoch's order and skips the indices of the K batches already trained on (nothing is
  read), with or without loader workers;
- the data's random draws (crops, flips, RandAugment, Mixup, a bad file's substitute), a function of
  (RNG_SEED, epoch, sample index) (``revvit.utils.seeding``): they do not depend on which process
  or worker reads a sample nor on what it read before, so persistent workers and skipped indices
  leave them as they were;
- training's own draws (drop path, dropout), the RNG states of every rank at the step boundary where
  the run stopped (python, numpy, torch, and CUDA when present), saved by ``capture`` and set again
  by ``restore``.

A mid-epoch checkpoint records the samples of the epoch that the whole job has trained on, not its
iterations, so a resume with another TRAIN.BATCH_SIZE or another number of processes continues at
the same sample. The epoch's samples are taken in one order, the job order: a job of W processes
trains position p of it on rank p % W, the first positions first (every job, one process included,
deals ``DistributedSampler``'s permutation round-robin), so the
C samples consumed are the order's first C positions, whatever the batch size. A resume continues
with position C, the rest dealt round-robin to its own processes (padded as DistributedSampler pads,
so each has as many), and batched in its own batch size from there: every batch is full, and the
incomplete batch at the end of the epoch is dropped as every epoch's is (``drop_last``). The
iteration numbers continue so that the epoch ends at its usual last iteration. A resume with the
same batch size and number of processes takes exactly the samples and batches an uninterrupted
run takes.
"""

import contextlib
import random

import numpy as np
import torch
import torch.distributed as dist
import yaml

from revvit.datasets.samplers import EpochDistributedSampler
from revvit.utils import distributed as du
from revvit.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["capture", "first_iteration", "positioned", "restore", "samples_after", "with_samples"]


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


def capture(samples=None, order_world_size=None):
    """Every rank's RNG states, as a list indexed by rank, and where the epoch stands: ``samples`` of it
    trained on by the whole job, in the job order of ``order_world_size`` processes (default: this
    job's). A collective: every rank calls it."""
    mine = _rng_state()
    states = [mine]
    if du.get_world_size() > 1:
        states = [None] * du.get_world_size()
        dist.all_gather_object(states, mine)
    record = {"world_size": du.get_world_size(), "rng": states}
    if samples is not None:
        record.update(samples=int(samples), order_world_size=int(order_world_size or du.get_world_size()))
    return record


def with_samples(resume_state, iteration, saved_cfg):
    """``resume_state`` with ``samples``: a record without them gives
    ``iteration`` x the global batch of the run that saved it (``saved_cfg``, its YAML dump)."""
    state = dict(resume_state or {})
    if "samples" not in state:
        world = int(state.get("world_size", 1))
        saved = (yaml.safe_load(saved_cfg) or {}) if saved_cfg else {}
        batch = saved.get("TRAIN", {}).get("BATCH_SIZE", 0) // max(1, saved.get("NUM_GPUS", 1))
        state.update(samples=int(iteration) * batch * world, order_world_size=world)
    return state


def samples_after(resume_state, first, iteration, loader):
    """The samples of the epoch consumed after ``iteration`` steps of this job, which began the epoch at
    step ``first`` having consumed ``resume_state["samples"]`` (None: from the start)."""
    before = resume_state["samples"] if resume_state else 0
    return before + (iteration - first) * loader.batch_size * du.get_world_size()


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


class _Keys(torch.utils.data.Sampler):
    def __init__(self, keys):
        self.keys = keys

    def __iter__(self):
        return iter(self.keys)

    def __len__(self):
        return len(self.keys)


def _job_order(loader):
    """The keys of the epoch in the job order (the module's docstring): DistributedSampler's
    permutation does not depend on the number of replicas, so one replica reads it as one sequence."""
    sampler = loader.sampler
    order = EpochDistributedSampler(loader.dataset, num_replicas=1, rank=0, shuffle=True, seed=sampler.seed)
    order.set_epoch(sampler.epoch)
    return list(order)


def _rest(loader, samples, order_world):
    """This rank's keys of the epoch after the job's first ``samples``."""
    world, rank = du.get_world_size(), du.get_rank()
    if order_world == world and samples % world == 0:  # this rank's own order, drawn as the full pass draws it
        return _Skip(loader.sampler, samples // world)
    order = _job_order(loader)
    rest = order[min(samples, len(order)):]
    rest += order[: -len(rest) % world]  # as many for every rank, padded from the start as DistributedSampler pads
    return _Keys(rest[rank::world])


def _position(loader, start_iter, resume_state):
    """(samples consumed, order's world size); a record without samples assumes this job's batch."""
    state = resume_state or {}
    samples = state.get("samples")
    if samples is None:
        samples = start_iter * loader.batch_size * du.get_world_size()
    return samples, state.get("order_world_size", state.get("world_size", du.get_world_size()))


def first_iteration(loader, resume_state):
    """The number of the first iteration a resume runs, so that the epoch ends at its usual last one:
    ``len(loader)`` less the full batches left to this rank (the same on every rank)."""
    samples, _ = _position(loader, 0, resume_state)
    left = -(-(len(loader.dataset) - samples) // du.get_world_size())  # this rank's share of the rest
    return max(0, len(loader) - left // loader.batch_size)


@contextlib.contextmanager
def _reading(loader, sampler):
    batch_sampler = loader.batch_sampler
    inner = batch_sampler.sampler
    batch_sampler.sampler = sampler
    try:
        yield
    finally:
        batch_sampler.sampler = inner


@contextlib.contextmanager
def positioned(loader, make_iter, start_iter, resume_state):
    """``with positioned(...) as it``: the batches of this epoch from where ``resume_state`` (a mid-epoch
    checkpoint's record) left it, the RNG as it was at that step boundary.

    ``make_iter(loader)`` is how the training loop iterates a loader (``stall.batches``). Enter after
    the epoch's order is set (``shuffle_dataset``); the loader is itself again on exit. A record
    without ``samples`` continues after ``start_iter`` batches of this job's size.
    """
    if not start_iter and resume_state is None:
        yield make_iter(loader)
        return
    samples, order_world = _position(loader, start_iter, resume_state)
    with _reading(loader, _rest(loader, samples, order_world)):
        it = make_iter(loader)
        _restore_or_warn(resume_state)
        yield it


def _restore_or_warn(resume_state):
    if not restore(resume_state):
        logger.warning(
            "The checkpoint was saved by a job of another size (or without RNG states): the rest of this epoch "
            "continues from the same position with other random draws, so it will not match an uninterrupted run exactly."
        )
