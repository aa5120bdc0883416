"""Optimizer construction and the per-iteration learning-rate schedule."""

from .lr_policy import get_lr_at_epoch
from .optimizer import build_optimizer, keep_implementation, param_groups, set_lr

__all__ = ["build_optimizer", "get_lr_at_epoch", "keep_implementation", "param_groups", "set_lr"]
