"""Learning rate as a function of the fractional epoch, set every iteration.

Semantics follow PySlowFast so its recipes reproduce: linear warmup from SOLVER.WARMUP_START_LR to
the policy's value at the end of warmup, then the policy (cosine, optionally starting after warmup;
steps with relative rates; or constant). With SOLVER.BASE_LR_SCALE_NUM_SHARDS the three rates are
multiplied by NUM_SHARDS (linear scaling with the number of machines).
"""

import math

from revvit.config import ConfigError

__all__ = ["check_schedule", "get_lr_at_epoch", "lr_scale"]


def lr_scale(cfg):
    return float(cfg.NUM_SHARDS) if cfg.SOLVER.BASE_LR_SCALE_NUM_SHARDS else 1.0


def _cosine(cfg, epoch):
    s = cfg.SOLVER
    base, end = s.BASE_LR * lr_scale(cfg), s.COSINE_END_LR * lr_scale(cfg)
    if end > base:
        raise ConfigError(f"SOLVER.COSINE_END_LR ({s.COSINE_END_LR}) must not exceed SOLVER.BASE_LR ({s.BASE_LR}).")
    offset = s.WARMUP_EPOCHS if s.COSINE_AFTER_WARMUP else 0.0
    span = s.MAX_EPOCH - offset
    if span <= 0:
        raise ConfigError(
            f"SOLVER.WARMUP_EPOCHS ({s.WARMUP_EPOCHS}) must be shorter than SOLVER.MAX_EPOCH ({s.MAX_EPOCH}) "
            "with SOLVER.COSINE_AFTER_WARMUP; shorten the warmup or train longer."
        )
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
    policy = _POLICIES.get(cfg.SOLVER.LR_POLICY)
    if policy is None:
        raise ConfigError(f"SOLVER.LR_POLICY '{cfg.SOLVER.LR_POLICY}' is not one of {sorted(_POLICIES)}.")
    warmup = cfg.SOLVER.WARMUP_EPOCHS
    if epoch < warmup:
        start = cfg.SOLVER.WARMUP_START_LR * lr_scale(cfg)
        end = policy(cfg, warmup)
        return start + (end - start) * epoch / warmup
    return policy(cfg, epoch)


def check_schedule(cfg):
    """Evaluate the schedule at its corners so a bad combination fails before training starts."""
    for epoch in (0.0, cfg.SOLVER.WARMUP_EPOCHS, float(cfg.SOLVER.MAX_EPOCH)):
        get_lr_at_epoch(cfg, epoch)
