"""AUG.ON_DEVICE: the per-sample augmentation of a training batch, run on the training device.

Workers hand over uint8 crops (decode, random-resized-crop, flip; clips: decode and the geometric
crop). Here, on the batch, in the recipe's order: RandAugment (per image; per clip, one draw for
all its frames), conversion to float and normalisation, timm's RandomErasing (per image; per frame
for clips, as the worker pipeline does), the channel order, then timm's Mixup / CutMix. On a GPU
this is microseconds of work per image instead of milliseconds of a worker's CPU.

Reproducibility: every random draw of a batch comes from Python's, NumPy's and torch's generators
reseeded from (RNG_SEED, epoch, rank, step) and restored afterwards (seeding.py), so the draws of
step ``s`` depend on nothing else: a run resumed at any step replays them exactly, and the training
loop's own random stream (drop path) is untouched.
"""

import torch
from timm.data.random_erasing import RandomErasing

from revvit.utils import distributed as du

from ..channels import model_channels
from .mixing import build_mixup, mix
from .rand_augment import BatchRandAugment, host_to_device
from revvit.utils.seeding import BATCH, seed_of, seeded

__all__ = ["DeviceAugment", "augment_on_device", "batch_seed", "seeded"]  # seeded: seeding's, beside batch_seed


def augment_on_device(cfg):
    """AUG.ON_DEVICE resolved: True / False as set; None is on when this run trains on CUDA and its
    augmentation policy, if any, is RandAugment (other timm policies stay in the workers)."""
    mode, aug = cfg.AUG.ON_DEVICE, cfg.AUG
    if mode is None:
        rand_or_none = not (aug.ENABLE and aug.AA_TYPE) or aug.AA_TYPE.startswith("rand")
        return du.uses_cuda(cfg) and rand_or_none
    return bool(mode)


def batch_seed(cfg, epoch, rank, step):
    """The seed of the device-side draws of one batch (run under ``seeding.seeded``): a function of
    (RNG_SEED, epoch, rank, step) only."""
    return seed_of(cfg.RNG_SEED, epoch, rank, step, BATCH)


def _pinned_for(t, device):
    """``t`` in pinned memory when it is bound for a CUDA ``device`` (``host_to_device`` then queues it)."""
    return t.pin_memory() if device.type == "cuda" else t


class DeviceAugment:
    """The device half of the training recipe: uint8 ``[B, 3, H, W]`` / ``[B, 3, T, H, W]`` in, model input out."""

    def __init__(self, cfg, device):
        aug, data = cfg.AUG, cfg.DATA
        self.cfg, self.device = cfg, device
        # Host tensors, copied to the device by the stream that augments (the prefetch stream) on each
        # call: a device tensor computed here would be written on the building stream, which that
        # stream does not wait for. Pinned, the copies are queued without a host sync.
        mean, std = (torch.tensor(v, dtype=torch.float64).mul(255.0).float().view(1, -1, 1, 1) for v in (data.MEAN, data.STD))
        self.mean, self.std = _pinned_for(mean, device), _pinned_for(std, device)
        on = aug.ENABLE
        self.rand_augment = (
            BatchRandAugment(aug.AA_TYPE, data.TRAIN_CROP_SIZE, data.MEAN, aug.INTERPOLATION) if on and aug.AA_TYPE else None
        )
        self.erase = (
            RandomErasing(aug.RE_PROB, mode=aug.RE_MODE, max_count=aug.RE_COUNT, device=device)
            if on and aug.RE_PROB > 0
            else None
        )
        self.mixup = build_mixup(cfg)

    def __call__(self, x, labels):
        """``(inputs, targets)``: float32 normalised inputs and int64 labels, or Mixup's soft targets."""
        video = x.ndim == 5
        b = x.shape[0]
        frames = x.shape[2] if video else 1
        if video:  # [B, C, T, H, W] -> [B*T, C, H, W], a clip's frames consecutive
            c, t, h, w = x.shape[1:]
            x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        if self.rand_augment is not None:
            x = self.rand_augment.apply(x, self.rand_augment.plan(b), frames)
        x = (x.float() - host_to_device(self.mean, x.device)) / host_to_device(self.std, x.device)
        if self.erase is not None:
            x = self.erase(x)
        if video:
            x = x.view(b, t, c, h, w).permute(0, 2, 1, 3, 4)
        x = model_channels(x, self.cfg, dim=1).contiguous()
        if self.mixup is not None:
            x, labels = mix(self.mixup, x, labels)
        return x, labels
