"""Training batches moved to the device and finished there (AUG.ON_DEVICE), one batch ahead.

Like timm's ``PrefetchLoader``: while the model trains on batch ``k``, batch ``k + 1`` is copied from
pinned memory (``non_blocking``) and augmented on a side CUDA stream; the training stream waits for
that stream only when it takes the batch. On the CPU, and without loader workers, the same code runs
synchronously, each batch read when the loop asks for it. Batches come
out as the training loop expects them from ``to_device``: ``([inputs], labels, index, meta)`` with
inputs, labels and index on the device, meta on the host.
"""

import torch

from .device_augment import DeviceAugment, augment_on_device, batch_seed
from .gpu_decode import decode_crops
from ..loader import num_workers
from revvit.utils.seeding import seeded

__all__ = ["device_batches"]


def device_batches(batches, cfg, device, epoch, rank=0, start_step=0):
    """``batches`` (an iterable of uint8 training batches) finished on ``device``, or ``batches`` itself
    when AUG.ON_DEVICE is off (the workers then did everything).

    ``epoch`` and ``rank`` (and ``start_step``, the first batch's index in its epoch for a run resumed
    mid-epoch) seed each batch's draws; see ``seeding.seeded``.
    """
    if not augment_on_device(cfg):
        return batches
    return _prefetch(batches, DeviceAugment(cfg, device), cfg, device, epoch, rank, start_step)


def _finish(batch, augment, cfg, device, seed):
    inputs, labels, index, meta = batch
    nb = device.type == "cuda"
    if isinstance(inputs[0], list):  # DATA_LOADER.GPU_DECODE: encoded files and their crop boxes
        data = cfg.DATA
        x = decode_crops(inputs[0], meta["crop"], data.TRAIN_CROP_SIZE, cfg.AUG.INTERPOLATION, device)
    else:
        x = inputs[0].to(device, non_blocking=nb)
    labels = labels.to(device, non_blocking=nb)
    with seeded(seed, device):
        x, labels = augment(x, labels)
    return [x], labels, index.to(device, non_blocking=nb), meta


def _prefetch(batches, augment, cfg, device, epoch, rank, start_step):
    # Without workers the loader reads in this process, synchronously, when the loop asks: there is
    # no reading to overlap with a step then.
    ahead = device.type == "cuda" and num_workers(cfg) > 0
    stream = torch.cuda.Stream(device) if ahead else None
    ready = None
    for step, batch in enumerate(batches, start=start_step):
        seed = batch_seed(cfg, epoch, rank, step)
        if stream is None:
            yield _finish(batch, augment, cfg, device, seed)
            continue
        with torch.cuda.stream(stream):
            upcoming = _finish(batch, augment, cfg, device, seed)
        if ready is not None:
            yield ready
        torch.cuda.current_stream(device).wait_stream(stream)
        for t in (upcoming[0][0], upcoming[1], upcoming[2]):
            t.record_stream(torch.cuda.current_stream(device))  # made on the side stream, used on this one
        ready = upcoming
    if ready is not None:
        yield ready
