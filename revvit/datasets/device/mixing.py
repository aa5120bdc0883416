"""Mixup / CutMix of training batches (timm's Mixup), for images and clips, in a worker's collate or on the device."""

from timm.data import Mixup

from revvit.config.derived import mixup_active

__all__ = ["build_mixup", "mix"]


def build_mixup(cfg):
    """timm's Mixup from ``MIXUP.*``, or None when mixing is off (``config.derived.mixup_active``)."""
    m = cfg.MIXUP
    if not mixup_active(cfg):
        return None
    return Mixup(
        mixup_alpha=m.ALPHA,
        cutmix_alpha=m.CUTMIX_ALPHA,
        prob=m.PROB,
        switch_prob=m.SWITCH_PROB,
        label_smoothing=m.LABEL_SMOOTH_VALUE,
        num_classes=cfg.MODEL.NUM_CLASSES,
    )


def mix(mixup, inputs, labels):
    """timm's Mixup on images or clips.

    timm pastes CutMix boxes with ``x[:, :, y0:y1, x0:x1]``, which on ``[B, C, T, H, W]`` would cut
    along T and H. Viewing the clip as ``[B, C*T, H, W]`` makes the box cover the same place in every
    frame, which is CutMix for video (PySlowFast does the same); mixup is unaffected.
    """
    shape = inputs.shape
    flat = inputs.reshape(shape[0], -1, shape[-2], shape[-1])
    flat, targets = mixup(flat, labels)
    return flat.reshape(shape), targets
