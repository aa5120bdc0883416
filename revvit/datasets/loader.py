"""DataLoaders for train / val / test, the batch collate, and Mixup / CutMix on training batches.

Batches are ``(inputs, labels, index, meta)``:

- ``inputs``: a list holding one float tensor, ``[B, 3, H, W]`` (images) or ``[B, 3, T, H, W]``
  (clips), the model's input convention.
- ``labels``: int64 ``[B]``; in training with Mixup (``mixup_active(cfg)``) soft float targets
  ``[B, MODEL.NUM_CLASSES]`` made by timm's Mixup, for timm's ``SoftTargetCrossEntropy``.
- ``index``: int64 ``[B]``, the sample (for video: the video) each row comes from, to ensemble views.
- ``meta``: ``skipped`` int64 ``[B]`` (bad files skipped to produce the row; feed
  ``BadSampleCounter.update``), ``skipped_paths`` (list of str), ``valid`` bool ``[B]`` (False: a
  val/test sample that could not be read; drop it with ``drop_invalid``), and for videos
  ``temporal_view``, ``spatial_view``, ``view`` int64 ``[B]``.

With ``AUG.NUM_SAMPLE > 1`` a training item holds several augmented copies; the collate flattens
them into the batch (labels and index repeated), so B = per-process batch x NUM_SAMPLE, as in
PySlowFast. The per-process batch is ``BATCH_SIZE // max(1, NUM_GPUS)``: BATCH_SIZE is the batch of
one machine (PySlowFast semantics).
"""

import logging

import torch
import torch.distributed as dist
from timm.data import Mixup
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from .build import DataLayoutError, build_dataset

__all__ = ["construct_loader", "shuffle_dataset", "mixup_active", "drop_invalid", "BatchCollator", "build_mixup"]

logger = logging.getLogger(__name__)


def mixup_active(cfg):
    """True when training batches carry soft targets (use SoftTargetCrossEntropy)."""
    return bool(cfg.MIXUP.ENABLE) and (cfg.MIXUP.ALPHA > 0 or cfg.MIXUP.CUTMIX_ALPHA > 0)


def build_mixup(cfg):
    """timm's Mixup from ``MIXUP.*``, or None when mixing is off."""
    m = cfg.MIXUP
    if not m.ENABLE:
        return None
    return Mixup(
        mixup_alpha=m.ALPHA,
        cutmix_alpha=m.CUTMIX_ALPHA,
        prob=m.PROB,
        switch_prob=m.SWITCH_PROB,
        label_smoothing=m.LABEL_SMOOTH_VALUE,
        num_classes=cfg.MODEL.NUM_CLASSES,
    )


def _mix(mixup, inputs, labels):
    """timm's Mixup on images or clips.

    timm pastes CutMix boxes with ``x[:, :, y0:y1, x0:x1]``, which on ``[B, C, T, H, W]`` would cut
    along T and H. Viewing the clip as ``[B, C*T, H, W]`` makes the box cover the same place in every
    frame, which is CutMix for video (PySlowFast does the same); mixup is unaffected.
    """
    shape = inputs.shape
    flat = inputs.reshape(shape[0], -1, shape[-2], shape[-1])
    flat, targets = mixup(flat, labels)
    return flat.reshape(shape), targets


class BatchCollator:
    """Stacks items ``(x or [x, ...], label, index, meta)`` into a batch; optionally mixes it."""

    def __init__(self, mixup=None):
        self.mixup = mixup

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
        inputs = torch.stack(inputs)
        labels = torch.tensor(labels, dtype=torch.int64)
        meta = {
            "skipped": torch.tensor(skipped, dtype=torch.int64),
            "skipped_paths": paths,
            "valid": torch.tensor(valid, dtype=torch.bool),
        }
        meta.update({key: torch.tensor(values, dtype=torch.int64) for key, values in extra.items()})
        if self.mixup is not None:
            inputs, labels = _mix(self.mixup, inputs, labels)
        return [inputs], labels, torch.tensor(index, dtype=torch.int64), meta


def drop_invalid(inputs, labels, index, meta):
    """The batch without the rows whose sample could not be read (``meta["valid"]`` False)."""
    keep = meta["valid"]
    if bool(keep.all()):
        return inputs, labels, index, meta
    out = {k: (v[keep] if torch.is_tensor(v) and v.shape[:1] == keep.shape else v) for k, v in meta.items()}
    return [x[keep] for x in inputs], labels[keep], index[keep], out


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def construct_loader(cfg, split):
    """The DataLoader of ``split`` ("train", "val" or "test") for this process."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"Unknown split '{split}'; use train, val or test.")
    train = split == "train"
    name = cfg.TEST.DATASET if split == "test" else cfg.TRAIN.DATASET
    batch_size = (cfg.TEST.BATCH_SIZE if split == "test" else cfg.TRAIN.BATCH_SIZE) // max(1, cfg.NUM_GPUS)
    if batch_size < 1:
        raise ValueError(f"{'TEST' if split == 'test' else 'TRAIN'}.BATCH_SIZE is smaller than NUM_GPUS ({cfg.NUM_GPUS}).")
    dataset = build_dataset(name, cfg, split)
    world, rank = _world()

    mixup = build_mixup(cfg) if train else None
    if train and len(dataset) // world < batch_size:
        raise DataLayoutError(
            f"The training split has {len(dataset)} samples, fewer than one batch of {batch_size} per process "
            f"({world} process(es)); lower TRAIN.BATCH_SIZE."
        )

    # One generator drives the shuffling and the workers' seeds, so a run is repeatable from
    # RNG_SEED; shuffle_dataset reseeds it per epoch, which makes a resumed run see the same order.
    generator = torch.Generator()
    generator.manual_seed(cfg.RNG_SEED + 1000 * rank)
    if world > 1:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=train, seed=cfg.RNG_SEED)
    elif train:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    workers = cfg.DATA_LOADER.NUM_WORKERS
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=cfg.DATA_LOADER.PIN_MEMORY and torch.cuda.is_available(),
        drop_last=train,
        collate_fn=BatchCollator(mixup),
        generator=generator,
        # Workers are re-created every epoch and seeded from the epoch-seeded generator, so the
        # augmentation draws of epoch N do not depend on earlier epochs and a resume replays them.
        persistent_workers=False,
        # A worker blocked on a read (a stalled network file system) must end the run, not hang it.
        timeout=cfg.DATA_LOADER.TIMEOUT if workers > 0 else 0,
    )
    loader.seed = cfg.RNG_SEED + 1000 * rank
    return loader


def shuffle_dataset(loader, epoch):
    """Set the sample order of ``epoch``: a function of (RNG_SEED, rank, epoch) only."""
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
    if loader.generator is not None and hasattr(loader, "seed"):
        loader.generator.manual_seed(loader.seed + 100003 * epoch)
