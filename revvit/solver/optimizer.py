"""Optimizer with weight-decay parameter groups.

Weight decay pulls weights towards zero; for biases, norm scales and position embeddings that is a
prior nobody wants, so they go to a group without decay: 1-D parameters (and any ``.bias``) when
SOLVER.ZERO_WD_1D_PARAM, and the names the model lists in ``no_weight_decay()`` (matched by full
name or by the last name component, e.g. ``rel_pos_h`` for ``blocks.3.attn.rel_pos_h``).
"""

import torch
from timm.optim import param_groups_weight_decay
from timm.utils import unwrap_model

__all__ = ["build_optimizer", "fused_available", "keep_implementation", "param_groups", "set_lr"]


def param_groups(model, cfg):
    """[{params, weight_decay}] for decayed and non-decayed trainable parameters (empty groups dropped),
    by timm's ``param_groups_weight_decay``. Decayed first: a checkpoint's optimizer state is indexed by
    group, and the checkpoints this project writes hold them in that order."""
    model = unwrap_model(model)
    fn = getattr(model, "no_weight_decay", None)
    listed = set(fn()) if callable(fn) else set()
    # timm matches full names (fnmatch); "*.name" also matches a name listed by its last component.
    patterns = listed | {f"*.{name}" for name in listed}
    # timm folds every parameter into one group when the decay is zero; a nonzero stand-in keeps the
    # layout a function of the model alone, so a checkpoint's optimizer state loads whatever the decay.
    groups = param_groups_weight_decay(
        model, weight_decay=1.0, weight_decay_exclude_1d=cfg.SOLVER.ZERO_WD_1D_PARAM, no_weight_decay_list=patterns
    )
    decay = [g for g in groups if g["weight_decay"]]
    no_decay = [g for g in groups if not g["weight_decay"]]
    for g in decay:
        g["weight_decay"] = cfg.SOLVER.WEIGHT_DECAY
    return decay + no_decay


def fused_available(groups):
    """Whether every parameter is on CUDA, where torch's fused kernels update all of them in one launch
    and take a GradScaler's found-inf flag on the device (an unfused step under a GradScaler reads the
    flag back to the host: one more sync per step). On CPU the reference (for-each) path stays."""
    return all(p.device.type == "cuda" for g in groups for p in g["params"])


# SOLVER.OPTIMIZING_METHOD -> (torch optimizer, its options beyond the groups and the learning rate).
_OPTIMIZERS = {
    "sgd": (torch.optim.SGD, lambda s: dict(momentum=s.MOMENTUM, dampening=s.DAMPENING, nesterov=s.NESTEROV)),
    "adam": (torch.optim.Adam, lambda s: dict(betas=tuple(s.BETAS))),
    "adamw": (torch.optim.AdamW, lambda s: dict(betas=tuple(s.BETAS), eps=1e-8)),
}


def build_optimizer(model, cfg):
    """The SOLVER.OPTIMIZING_METHOD optimizer over ``param_groups`` (fused on CUDA); names checked by the
    config gate (OPTIMIZERS)."""
    optimizer_cls, options = _OPTIMIZERS[cfg.SOLVER.OPTIMIZING_METHOD]
    groups = param_groups(model, cfg)
    fused = {"fused": True} if fused_available(groups) else {}
    return optimizer_cls(groups, lr=cfg.SOLVER.BASE_LR, **options(cfg.SOLVER), **fused)


def keep_implementation(optimizer):
    """Undo what ``load_state_dict`` did to the implementation flags: a checkpoint's parameter groups carry
    the ``fused`` / ``foreach`` of the device it was saved on, and a CPU checkpoint resumed on CUDA would
    otherwise step unfused (one sync per step), and under a GradScaler fail in torch's assertion.

    ``load_state_dict`` also placed each ``step`` count by the checkpoint's flags: left on the CPU (or as
    saved, e.g. float64) for an unfused checkpoint. A fused kernel reads the count through a device
    pointer, so a fused group's counts become float32 tensors on their parameter's device.
    """
    for group in optimizer.param_groups:
        for key in ("fused", "foreach"):
            if key in optimizer.defaults:
                group[key] = optimizer.defaults[key]
        if group.get("fused") or group.get("capturable"):
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if "step" in state:
                    state["step"] = torch.as_tensor(state["step"]).to(p.device, torch.float32)
    return optimizer


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
