"""The training sampler: each epoch's sample order, with the epoch carried along to the workers.

It yields keys ``(epoch, index)`` rather than bare indices. DataLoader hands each key to the worker
that reads the sample, and the data set seeds the sample's random draws from it
(``seeding.keyed_items``); this is how the epoch reaches workers that live for the whole run
(``persistent_workers``), which were started before the epoch was known.

The order is torch's ``DistributedSampler``'s, for one process as for many (``num_replicas=1``): a
permutation drawn anew at every pass from a generator seeded by ``seed + epoch``, so it is a function
of (``seed``, epoch) only, whatever iterated the sampler before, and a one-process run visits each
epoch's samples in the order that a many-process run deals out to its ranks.
"""

from torch.utils.data import DistributedSampler

__all__ = ["EpochDistributedSampler"]


class EpochDistributedSampler(DistributedSampler):
    """torch's DistributedSampler (this rank's share of the epoch's permutation), yielding keys."""

    def __iter__(self):
        epoch = self.epoch
        for index in super().__iter__():
            yield epoch, index
