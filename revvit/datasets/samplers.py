"""The training samplers: each epoch's sample order, with the epoch carried along to the workers.

Both yield keys ``(epoch, index)`` rather than bare indices. DataLoader hands each key to the worker
that reads the sample, and the data set seeds the sample's random draws from it
(``seeding.keyed_items``); this is how the epoch reaches workers that live for the whole run
(``persistent_workers``), which were started before the epoch was known. The order itself is drawn
here, in the training process, anew at every pass, from a generator seeded by ``(seed, epoch)``: it
does not depend on how often or by which iterator the sampler was iterated before.
"""

import torch
from torch.utils.data import DistributedSampler, Sampler

__all__ = ["EpochDistributedSampler", "EpochRandomSampler"]


class EpochRandomSampler(Sampler):
    """A random permutation of ``range(n)`` per epoch, a function of (``seed``, epoch) only; one process."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        epoch = self.epoch
        g = torch.Generator()
        g.manual_seed(self.seed + 100003 * epoch)
        for index in torch.randperm(self.n, generator=g).tolist():
            yield epoch, index

    def __len__(self):
        return self.n


class EpochDistributedSampler(DistributedSampler):
    """torch's DistributedSampler (this rank's share of the epoch's permutation), yielding keys."""

    def __iter__(self):
        epoch = self.epoch
        for index in super().__iter__():
            yield epoch, index
