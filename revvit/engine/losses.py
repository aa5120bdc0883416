"""Training losses selected by MODEL.LOSS_FUNC, each accepting hard or soft (mixup) targets.

The model returns raw logits in training, so every loss here takes logits. Losses are computed in
at least float32 (bf16/fp16 logits under autocast are promoted; a float64 model stays float64).

- ``cross_entropy``: torch's cross entropy; it accepts class indices or class probabilities, so it
  also works with mixup targets.
- ``soft_cross_entropy``: timm's SoftTargetCrossEntropy. Hard labels (mixup off, or validation)
  become one-hot targets without smoothing, as PySlowFast's soft cross entropy does: in that
  recipe label smoothing is part of mixup (MIXUP.LABEL_SMOOTH_VALUE), so turning mixup off turns
  smoothing off too, and the loss equals plain cross entropy.
- ``bce`` / ``bce_logit``: binary cross entropy on the logits (numerically stable sigmoid inside),
  against one-hot or soft targets. PySlowFast's ``bce`` expects probabilities, which these models
  never produce in training, so both names mean the logit form here.
"""

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

__all__ = ["build_loss"]


def _wide(x):
    """``x`` in float32, or in its own dtype when that is wider (float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _as_probabilities(labels, num_classes, dtype):
    if labels.ndim == 1:
        return F.one_hot(labels.long(), num_classes).to(dtype)
    return labels.to(dtype)


class _SoftCE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.soft = SoftTargetCrossEntropy()

    def forward(self, logits, labels):
        logits = _wide(logits)
        return self.soft(logits, _as_probabilities(labels, logits.shape[1], logits.dtype))


class _BCEWithLogits(torch.nn.Module):
    def forward(self, logits, labels):
        logits = _wide(logits)
        return F.binary_cross_entropy_with_logits(logits, _as_probabilities(labels, logits.shape[1], logits.dtype))


class _CE(torch.nn.Module):
    def forward(self, logits, labels):
        logits = _wide(logits)
        return F.cross_entropy(logits, labels if labels.ndim == 1 else labels.to(logits.dtype))


_LOSSES = {"cross_entropy": _CE, "soft_cross_entropy": _SoftCE, "bce": _BCEWithLogits, "bce_logit": _BCEWithLogits}


def build_loss(cfg):
    return _LOSSES[cfg.MODEL.LOSS_FUNC]()  # names checked by the config gate (LOSS_FUNCS)
