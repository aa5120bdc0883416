"""Optimizer construction and the per-iteration learning-rate schedule."""

from .lr_policy import check_schedule, get_lr_at_epoch
from .optimizer import build_optimizer, param_groups, set_lr

__all__ = ["build_optimizer", "check_schedule", "get_lr_at_epoch", "param_groups", "set_lr"]
