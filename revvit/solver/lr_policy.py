"""Learning rate as a function of the fractional epoch, set every iteration.

Semantics follow PySlowFast so its recipes reproduce: linear warmup from SOLVER.WARMUP_START_LR to
the policy's value at the end of warmup, then the policy (cosine, optionally starting after warmup;
steps with relative rates; or constant). With SOLVER.BASE_LR_SCALE_NUM_SHARDS the three rates are
multiplied by NUM_SHARDS (linear scaling with the number of machines).

The config gate (revvit/config/validate.py) has already refused impossible schedules (an end rate
above the base, a warmup as long as training with COSINE_AFTER_WARMUP, an unknown policy), so this
function, called every iteration, only computes.
"""

import math

__all__ = ["get_lr_at_epoch", "lr_scale"]


def lr_scale(cfg):
    return float(cfg.NUM_SHARDS) if cfg.SOLVER.BASE_LR_SCALE_NUM_SHARDS else 1.0


def _cosine(cfg, epoch):
    s = cfg.SOLVER
    base, end = s.BASE_LR * lr_scale(cfg), s.COSINE_END_LR * lr_scale(cfg)
    offset = s.WARMUP_EPOCHS if s.COSINE_AFTER_WARMUP else 0.0
    span = s.MAX_EPOCH - offset
    progress = min(max((epoch - offset) / span, 0.0), 1.0)
    return end + (base - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _steps_with_relative_lrs(cfg, epoch):
    s = cfg.SOLVER
    index = 0
    for i, step in enumerate(s.STEPS):
        if epoch >= step:
            index = i
    return s.LRS[index] * s.BASE_LR * lr_scale(cfg)


def _constant(cfg, epoch):
    return cfg.SOLVER.BASE_LR * lr_scale(cfg)


_POLICIES = {"cosine": _cosine, "steps_with_relative_lrs": _steps_with_relative_lrs, "constant": _constant}


def get_lr_at_epoch(cfg, epoch):
    """LR at fractional ``epoch`` (e.g. 3.25 = a quarter into the fourth epoch)."""
    policy = _POLICIES[cfg.SOLVER.LR_POLICY]
    warmup = cfg.SOLVER.WARMUP_EPOCHS
    if epoch < warmup:
        start = cfg.SOLVER.WARMUP_START_LR * lr_scale(cfg)
        end = policy(cfg, warmup)
        return start + (end - start) * epoch / warmup
    return policy(cfg, epoch)
