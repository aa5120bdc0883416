"""DataLoaders for train / val / test and the batch collate (Mixup / CutMix in the workers unless AUG.ON_DEVICE).

Batches are ``(inputs, labels, index, meta)``:

- ``inputs``: a list holding one float tensor, ``[B, 3, H, W]`` (images) or ``[B, 3, T, H, W]``
  (clips), the model's input convention. Training batches under ``AUG.ON_DEVICE`` hold uint8 crops
  and int64 labels instead; ``prefetch.device_batches`` finishes them on the device (RandAugment,
  normalisation, erasing, Mixup) before the model sees them.
- ``labels``: int64 ``[B]``; in training with Mixup (``mixup_active(cfg)``) soft float targets
  ``[B, MODEL.NUM_CLASSES]`` made by timm's Mixup, for a loss that takes class probabilities (engine/losses.py).
- ``index``: int64 ``[B]``, the sample (for video: the video) each row comes from, to ensemble views.
- ``meta``: ``skipped`` int64 ``[B]`` (bad files skipped to produce the row; feed
  ``BadSampleCounter.update``), ``skipped_paths`` (list of str), ``valid`` bool ``[B]`` (False: a
  val/test sample that could not be read; drop it with ``drop_invalid``), in training ``epoch``
  int64 ``[B]`` (the epoch that seeded the row's draws), and for videos ``temporal_view``,
  ``spatial_view``, ``view`` int64 ``[B]``.

Training draws (crops, flips, RandAugment, erasing, a bad file's substitute, a clip's start) are
seeded per sample by (RNG_SEED, epoch, sample index), Mixup per batch by (RNG_SEED, epoch, the
batch's sample indices) (seeding.py): the batches of an epoch are the same whatever the number of
workers, the rank that reads them, or what the workers read before. So workers live for the whole
run (``persistent_workers``), and a run resumed mid-epoch just skips the indices it has trained on.

With ``AUG.NUM_SAMPLE > 1`` a training item holds several augmented copies; the collate flattens
them into the batch (labels and index repeated), so B = per-process batch x NUM_SAMPLE, as in
PySlowFast. The per-process batch is ``config.derived.per_process_batch_size``: BATCH_SIZE is the
batch of one machine (PySlowFast semantics).
"""

import contextlib
import logging
import os
import shutil

import torch
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from revvit.config.derived import mixup_active, per_process_batch_size
from revvit.utils import distributed as du

from .build import build_dataset, dataset_name
from .device.device_augment import augment_on_device
from .errors import DataLayoutError
from .device.mixing import build_mixup, mix
from .samplers import EpochDistributedSampler
from revvit.utils.seeding import MIX, seed_of, seeded

__all__ = ["construct_loader", "shuffle_dataset", "mixup_active", "drop_invalid", "BatchCollator", "build_mixup", "num_workers"]

logger = logging.getLogger(__name__)


class BatchCollator:
    """Stacks items ``(x or [x, ...], label, index, meta)`` into a batch; optionally mixes it.

    Items keyed by an epoch (``meta["epoch"]``, training) are mixed with draws seeded by
    ``(seed, epoch, the rows' sample indices)``, whichever worker collates them; others draw from
    the global generators.
    """

    def __init__(self, mixup=None, seed=None):
        self.mixup, self.seed = mixup, seed

    def __call__(self, items):
        inputs, labels, index, skipped, valid, paths = [], [], [], [], [], []
        extra = {}
        for x, label, idx, meta in items:
            samples = x if isinstance(x, (list, tuple)) else [x]
            n = len(samples)
            inputs.extend(samples)
            labels.extend([label] * n)
            index.extend([idx] * n)
            # The skip count goes on the first copy only, so that sums stay right.
            skipped.extend([meta["skipped"]] + [0] * (n - 1))
            valid.extend([meta["valid"]] * n)
            paths.extend(meta["skipped_paths"])
            for key, value in meta.items():
                if key not in ("skipped", "valid", "skipped_paths"):
                    extra.setdefault(key, []).extend([value] * n)
        inputs = torch.stack(inputs) if inputs[0].ndim > 1 else inputs  # 1-D: encoded files (GPU_DECODE)
        labels = torch.tensor(labels, dtype=torch.int64)
        meta = {
            "skipped": torch.tensor(skipped, dtype=torch.int64),
            "skipped_paths": paths,
            "valid": torch.tensor(valid, dtype=torch.bool),
        }
        meta.update({key: torch.as_tensor(values if not torch.is_tensor(values[0]) else torch.stack(values), dtype=torch.int64) for key, values in extra.items()})
        if self.mixup is not None:
            with self._mixing_draws(items[0][3].get("epoch"), index):
                inputs, labels = mix(self.mixup, inputs, labels)
        return [inputs], labels, torch.tensor(index, dtype=torch.int64), meta

    def _mixing_draws(self, epoch, index):
        if epoch is None or self.seed is None:
            return contextlib.nullcontext()
        return seeded(seed_of(self.seed, epoch, *index, MIX))


def drop_invalid(inputs, labels, index, meta):
    """The batch without the rows whose sample could not be read (``meta["valid"]`` False)."""
    keep = meta["valid"]
    if bool(keep.all()):
        return inputs, labels, index, meta
    out = {k: (v[keep] if torch.is_tensor(v) and v.shape[:1] == keep.shape else v) for k, v in meta.items()}
    return [x[keep] for x in inputs], labels[keep], index[keep], out


def num_workers(cfg):
    """DATA_LOADER.NUM_WORKERS, with -1 resolved to this machine's cores per process (at most 16).

    0 means no worker (loading in the training process), as in PySlowFast. -1 leaves one core
    per process for the training loop itself; 16 is where one process's workers stop paying on the
    machines we measured (a GPU step of Rev-ViT-B eats a few hundred images/s per worker count).
    """
    workers = cfg.DATA_LOADER.NUM_WORKERS
    if workers != -1:
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(16, cores // max(1, cfg.NUM_GPUS) - 1))


def _warn_if_shm_is_small(batch_bytes, workers, prefetch):
    """One line when /dev/shm cannot hold the batches the workers keep in flight (they then die with a bus error)."""
    if workers == 0 or not os.path.isdir("/dev/shm"):
        return
    need = batch_bytes * workers * prefetch
    free = shutil.disk_usage("/dev/shm").free
    if free < need:
        logger.warning(
            f"/dev/shm has {free / 2**20:.0f} MiB free but {workers} loader workers x {prefetch} batches in flight need "
            f"about {need / 2**20:.0f} MiB: workers may die with a bus error. Enlarge /dev/shm (docker run --shm-size) "
            "or lower DATA_LOADER.NUM_WORKERS / DATA_LOADER.PREFETCH_FACTOR."
        )


def _batch_bytes(dataset, batch_size, uint8):
    """Bytes of one batch of the dataset's inputs (one training sample read, keyed so that its draws
    leave this process's generators alone, to know its shape)."""
    try:
        x = dataset[(0, 0)][0]
    except Exception:  # a bad first file: the warning is a hint, not worth failing for
        return 0
    x = x[0] if isinstance(x, (list, tuple)) else x
    return x.numel() * (1 if uint8 else 4) * batch_size


def construct_loader(cfg, split):
    """The DataLoader of ``split`` ("train", "val" or "test") for this process (the gate checked the batch sizes)."""
    train = split == "train"
    batch_size = per_process_batch_size(cfg, split)
    dataset = build_dataset(dataset_name(cfg, split), cfg, split)
    world, rank = du.get_world_size(), du.get_rank()

    # With AUG.ON_DEVICE the training batches stay uint8 and are mixed on the device (device_augment.py).
    mixup = build_mixup(cfg) if train and not augment_on_device(cfg) else None
    if train and len(dataset) // world < batch_size:
        raise DataLayoutError(
            f"The training split has {len(dataset)} samples, fewer than one batch of {batch_size} per process "
            f"({world} process(es)); lower TRAIN.BATCH_SIZE."
        )

    if train:
        sampler = EpochDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.RNG_SEED)
    elif world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
    else:
        sampler = SequentialSampler(dataset)
    workers = num_workers(cfg)
    pin = cfg.DATA_LOADER.PIN_MEMORY and du.uses_cuda(cfg)
    if train and workers > 0 and pin:  # a GPU run: the case where a small /dev/shm bites
        _warn_if_shm_is_small(_batch_bytes(dataset, batch_size, augment_on_device(cfg)), workers, cfg.DATA_LOADER.PREFETCH_FACTOR)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin,
        drop_last=train,
        collate_fn=BatchCollator(mixup, cfg.RNG_SEED),
        # The workers' base seeds come from a generator of their own, so that starting an iterator
        # does not advance this process's torch generator (no draw of ours uses those seeds).
        generator=torch.Generator().manual_seed(cfg.RNG_SEED),
        # Started once for the run: the draws are seeded per sample, the epoch comes with each key.
        persistent_workers=workers > 0,
        prefetch_factor=cfg.DATA_LOADER.PREFETCH_FACTOR if workers > 0 else None,
        # A worker blocked on a read (a stalled network file system) must end the run, not hang it.
        timeout=cfg.DATA_LOADER.TIMEOUT if workers > 0 else 0,
    )


def shuffle_dataset(loader, epoch):
    """Set the sample order of ``epoch`` (a function of (RNG_SEED, rank, epoch) only) and the epoch
    that keys the samples' random draws."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
