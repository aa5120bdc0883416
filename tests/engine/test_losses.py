"""MODEL.LOSS_FUNC: ``soft_cross_entropy`` is torch's cross entropy, and that is timm's
SoftTargetCrossEntropy on mixup's probabilities and on one-hot labels, in value, gradient and dtype."""

import pytest
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

from revvit.config import get_cfg
from revvit.engine.losses import build_loss

N, C = 8, 10


def _loss(name):
    cfg = get_cfg()
    cfg.MODEL.LOSS_FUNC = name
    return build_loss(cfg)


def _value_and_grad(fn, logits, targets):
    x = logits.clone().requires_grad_(True)
    loss = fn(x, targets)
    loss.backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("hard", [True, False])
def test_soft_cross_entropy_is_timms_on_every_target(dtype, hard):
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(N, C, generator=g)).to(dtype)
    labels = torch.randint(0, C, (N,), generator=g)
    if hard:
        targets, probabilities = labels, F.one_hot(labels, C).float()
    else:  # a mixup batch: two smoothed one-hots mixed with lam 0.7
        smooth = F.one_hot(labels, C) * 0.9 + 0.01
        probabilities = targets = 0.7 * smooth + 0.3 * smooth.flip(0)
    wide = torch.promote_types(dtype, torch.float32)
    # timm's loss on the logits widened as build_loss widens them (at least float32).
    want, want_grad = _value_and_grad(
        lambda x, t: SoftTargetCrossEntropy()(x.to(wide), probabilities.to(wide)), logits, targets
    )
    for name in ("soft_cross_entropy", "cross_entropy"):
        got, grad = _value_and_grad(_loss(name), logits, targets)
        assert got.dtype == wide and grad.dtype == dtype
        # Both sum C products -p * log_softmax and average N rows in ``wide``; the orders of those
        # sums may differ, each rounding at most eps per term: |error| <= (C + N) eps |loss|, with
        # eps 2**-24 (float32) or 2**-53 (float64). The gradient (softmax - p) / N takes a few
        # roundings per element in ``wide`` either way, then is cast to ``dtype``, where two values
        # that straddle a rounding boundary land one ulp of ``dtype`` apart: rtol 4 ulps of ``dtype``,
        # atol 4 roundings of ``wide`` on an element of size 1 / N.
        eps = torch.finfo(wide).eps / 2
        assert abs(float(got) - float(want)) <= (C + N) * eps * abs(float(want))
        assert torch.allclose(grad.to(wide), want_grad.to(wide), rtol=4 * torch.finfo(dtype).eps, atol=4 * eps / N)
