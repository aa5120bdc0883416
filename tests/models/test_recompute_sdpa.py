"""A recomputation in backward runs the forward's SDPA kernel, whatever ``sdpa_kernel`` wraps the forward alone.

The reversible backward and activation checkpointing recompute attention after the caller's contexts have
exited. Under plain autograd an ``sdpa_kernel`` around the forward alone decides every attention of the
step; the recomputing paths must give what plain autograd gives there.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from helpers import TINY_MODELS as MODELS, make_cfg, max_rel_diff
from revvit.models import build_model


def build(name, extra=()):
    path, opts, shape = MODELS[name]
    torch.manual_seed(0)
    model = build_model(make_cfg(path, [*opts, *extra])).double().train()
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model, x


def grads_math_forward(model, x, backward_under_math):
    """Parameter gradients of one step whose forward runs under ``sdpa_kernel(MATH)``; drop path and dropout
    draw the same masks every time."""
    model.zero_grad()
    torch.manual_seed(5)
    with sdpa_kernel(SDPBackend.MATH):
        logits = model([x])
        loss = F.cross_entropy(logits, torch.arange(x.shape[0]) % logits.shape[1])
        if backward_under_math:
            loss.backward()
    if not backward_under_math:
        loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture
def sdpa_flags(monkeypatch):
    """The backend flags each scaled_dot_product_attention call of the model ran under."""
    calls, sdpa = [], F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append((torch.backends.cuda.math_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
                      torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.cudnn_sdp_enabled()))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return calls


MATH_ONLY = (True, False, False, False)


@pytest.mark.parametrize("name", ["rev_vit", "rev_mvit_image"])
def test_reversible_recomputation_runs_the_forwards_kernel(name, sdpa_flags):
    model, x = build(name)
    depth = len(model.rev_backbone.layers)
    model.zero_grad()
    with sdpa_kernel(SDPBackend.MATH):
        loss = model([x]).logsumexp(1).sum()
    assert sdpa_flags == [MATH_ONLY] * depth
    sdpa_flags.clear()
    loss.backward()  # outside the caller's sdpa_kernel
    reversible = sum(type(b).__name__ == "ReversibleBlock" for b in model.rev_backbone.layers)
    assert reversible > 0 and sdpa_flags == [MATH_ONLY] * reversible
    assert torch.backends.cuda.flash_sdp_enabled()  # the caller's selection is back after backward


@pytest.mark.parametrize("name", ["rev_vit", "rev_mvit_image"])
def test_reversible_gradients_with_sdpa_kernel_around_the_forward_alone(name):
    model, x = build(name)
    outside = grads_math_forward(model, x, backward_under_math=False)
    # The same computation, op for op: CPU kernels are deterministic, so the gradients are bit-identical.
    inside = grads_math_forward(model, x, backward_under_math=True)
    assert all(torch.equal(outside[n], inside[n]) for n in inside)
    # Against plain autograd under MATH: what is left is the reconstruction's rounding. float64: each
    # block adds and subtracts its branch once (relative error u = 2**-53 ~ 1.1e-16 each); the step's
    # gradients pass that on through depth x (a few ops), far from 1e-10 (the bound of test_reversible).
    model.rev_backbone.use_rev_backprop = False
    plain = grads_math_forward(model, x, backward_under_math=False)
    assert max_rel_diff(outside, plain) <= 1e-10


@pytest.mark.parametrize("name,rev", [("rev_mvit_image", False), ("rev_mvit_image", True)])
def test_activation_checkpointing_with_sdpa_kernel_around_the_forward_alone(name, rev, sdpa_flags):
    """torch's checkpoint replays RNG and autocast but not the SDPA selection: without replaying it, the
    recomputed attention is another kernel with other saved tensors, and torch raises CheckpointError."""
    opts = ["MVIT.REV.ENABLE", str(rev)]
    ckpt, x = build(name, [*opts, "MODEL.ACT_CHECKPOINT", "True"])
    plain, _ = build(name, opts)
    plain.load_state_dict(ckpt.state_dict())
    got = grads_math_forward(ckpt, x, backward_under_math=False)
    assert sdpa_flags and all(flags == MATH_ONLY for flags in sdpa_flags)
    want = grads_math_forward(plain, x, backward_under_math=False)
    # The checkpointed region recomputes the forward's values exactly, and runs the same backward ops.
    assert all(torch.equal(got[n], want[n]) for n in want)
