"""Random draws that depend on what they are drawn for, never on which process draws them or when.

Training's own stream (drop path, dropout, the global generators of each rank) is reseeded at every
epoch from (RNG_SEED, epoch, rank) (``seed_all(epoch_seed(...))``), so a resumed epoch replays it.

Augmentation code (timm's transforms, our clip transforms, the decoder's temporal sampling, a bad
sample's substitute) draws from Python's, NumPy's and torch's global generators. Left alone, those
draws would depend on which loader worker prepared a sample and how many samples it prepared before,
so a run could not be repeated with another number of workers, nor resumed mid-epoch with persistent
workers. So every draw runs under ``seeded(seed)``, with ``seed`` made by ``seed_of`` from a key that
names the work: a training sample is keyed by (RNG_SEED, epoch, sample index), a device-side batch by
(RNG_SEED, epoch, rank, step). ``seeded`` restores the generators on exit, so code that runs in the
training process itself (no loader workers; the device half of the recipe) leaves training's own
random stream (drop path, dropout) as it found it.
"""

import contextlib
import functools
import random

import numpy as np
import torch

__all__ = ["epoch_seed", "keyed_items", "sample_seed", "seed_all", "seed_of", "seeded"]

# Last element of a key: the same numbers never seed two kinds of draws.
SAMPLE, BATCH, MIX = 16, 15, 17


def seed_of(*key):
    """A 32-bit seed from integers ``key``, well mixed (NumPy's SeedSequence): nearby keys give unrelated seeds."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


def seed_all(seed):
    """Python's, NumPy's and torch's global generators (torch: every device) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(cfg, epoch, rank):
    """Training's stream in ``epoch`` on ``rank``: a function of (RNG_SEED, epoch, rank) only."""
    return seed_of(cfg.RNG_SEED, epoch, rank)


def sample_seed(base_seed, epoch, index):
    """The seed of every random draw that prepares training sample ``index`` in ``epoch``."""
    return seed_of(base_seed, epoch, index, SAMPLE)


@contextlib.contextmanager
def seeded(seed, device=None):
    """Python, NumPy and torch (CPU, and ``device`` when it is a CUDA device) generators seeded with
    ``seed``, restored on exit. Other CUDA devices are left alone (``torch.manual_seed`` would reseed them)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    cuda = device is not None and torch.device(device).type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else [], device_type="cuda"):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def keyed_items(getitem):
    """Decorates a data set's ``__getitem__(index)`` to also take the key ``(epoch, index)`` the training
    sampler yields (samplers.py): the item's random draws then come from ``sample_seed(cfg.RNG_SEED,
    epoch, index)`` and its ``meta["epoch"]`` says which epoch (the collate seeds Mixup with it). A
    plain index draws from the global generators, as any torch data set does."""

    @functools.wraps(getitem)
    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return getitem(self, key)
        epoch, index = key
        with seeded(sample_seed(self.cfg.RNG_SEED, epoch, index)):
            x, label, index, meta = getitem(self, index)
        meta["epoch"] = epoch
        return x, label, index, meta

    return __getitem__
