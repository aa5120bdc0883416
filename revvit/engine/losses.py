"""Training losses selected by MODEL.LOSS_FUNC, each accepting hard or soft (mixup) targets.

The model returns raw logits in training, so every loss here takes logits. Losses are computed in
at least float32 (bf16/fp16 logits under autocast are promoted; a float64 model stays float64).

- ``cross_entropy`` and ``soft_cross_entropy``: one loss, torch's cross entropy, which takes class
  indices or class probabilities. On mixup's probabilities it is timm's SoftTargetCrossEntropy
  (``-sum(p * log_softmax)`` averaged over the batch), PySlowFast's ``soft_cross_entropy``; on hard
  labels (mixup off, or validation) it is cross entropy without smoothing, as PySlowFast's soft cross
  entropy on one-hot targets: in that recipe label smoothing is part of mixup
  (MIXUP.LABEL_SMOOTH_VALUE), so turning mixup off turns smoothing off too.
- ``bce`` / ``bce_logit``: binary cross entropy on the logits (numerically stable sigmoid inside),
  against one-hot or soft targets. PySlowFast's ``bce`` expects probabilities, which these models
  never produce in training, so both names mean the logit form here.
"""

import torch
import torch.nn.functional as F

__all__ = ["build_loss"]


def _wide(x):
    """``x`` in float32, or in its own dtype when that is wider (float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _as_probabilities(labels, num_classes, dtype):
    if labels.ndim == 1:
        return F.one_hot(labels.long(), num_classes).to(dtype)
    return labels.to(dtype)


class _BCEWithLogits(torch.nn.Module):
    def forward(self, logits, labels):
        logits = _wide(logits)
        return F.binary_cross_entropy_with_logits(logits, _as_probabilities(labels, logits.shape[1], logits.dtype))


class _CE(torch.nn.Module):
    def forward(self, logits, labels):
        logits = _wide(logits)
        return F.cross_entropy(logits, labels if labels.ndim == 1 else labels.to(logits.dtype))


_LOSSES = {"cross_entropy": _CE, "soft_cross_entropy": _CE, "bce": _BCEWithLogits, "bce_logit": _BCEWithLogits}


def build_loss(cfg):
    return _LOSSES[cfg.MODEL.LOSS_FUNC]()  # names checked by the config gate (LOSS_FUNCS)
