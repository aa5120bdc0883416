"""bf16 and fp16 autocast on CUDA give float32's gradients up to the rounding of the dtype.

The argument is the CPU test's (tests/models/test_mixed_precision.py): one rounding to nearest has a
relative error uniform in [-u, u]; R independent roundings on the longest path of a training step leave
a relative error of standard deviation sqrt(R) u / sqrt(3); the test allows three. u = 2**-8 for
bfloat16 (8 significant bits), 2**-11 for float16 (11). CUDA autocast rounds what CPU autocast rounds
and also the pooling convolutions (cuDNN runs them in the autocast dtype; on CPU PoolConv3d keeps them
float32): at most one pool conv lies on a path through one block (input, weight, output: 3 roundings),
so R is counted with 16 roundings per block instead of 13, an upper bound for Rev-ViT, which has none.
fp16 gradients are computed from a loss scaled by 2**10, as GradScaler does, then unscaled: a power of
two changes no mantissa, it only keeps small gradients out of float16's subnormal range.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_MODELS as MODELS, ZERO_GRAD_SUFFIXES, make_cfg
from revvit.models import build_model
from revvit.models.attention import PoolConv3d

UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
FORWARD_PER_BLOCK = 13 + 3  # the CPU test's 13 (attention 7, MLP 6) + one pooling conv on the path
STEM_AND_HEAD = 6
LOSS_SCALE = 2.0**10
NO_DROP = ["MVIT.DROPPATH_RATE", "0.0", "MVIT.DROPOUT_RATE", "0.0", "MODEL.DROPOUT_RATE", "0.0"]


def three_sigma(depth, u):
    r = 2 * (FORWARD_PER_BLOCK * depth + STEM_AND_HEAD)  # the backward rounds once per forward rounding
    return 3 * math.sqrt(r) * u / math.sqrt(3)


def grads(model, x, rev, dtype):
    """Parameter gradients (float64, unscaled) of one cross-entropy step under ``dtype`` autocast (None: off)."""
    model.rev_backbone.use_rev_backprop = rev
    model.zero_grad(set_to_none=True)
    scale = LOSS_SCALE if dtype == torch.float16 else 1.0
    with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = model([x])
        loss = F.cross_entropy(logits.float(), torch.arange(x.shape[0], device=x.device) % logits.shape[1])
    (loss * scale).backward()
    return {n: p.grad.double() / scale for n, p in model.named_parameters()}


def rel_errors(got, ref):
    whole = torch.cat([g.flatten() for g in ref.values()]).norm()
    return {n: ((got[n] - ref[n]).norm() / (whole if n.endswith(ZERO_GRAD_SUFFIXES) else ref[n].norm())).item()
            for n in ref}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_autocast_gradients_are_float32_up_to_rounding(name, dtype, device, numerics):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bfloat16")
    path, opts, shape = MODELS[name]
    torch.manual_seed(0)
    cfg = make_cfg(path, [*opts, *NO_DROP])
    model = build_model(cfg).to(device).train()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(device)
    ref = grads(model, x, rev=False, dtype=None)
    err = {rev: rel_errors(grads(model, x, rev=rev, dtype=dtype), ref) for rev in (False, True)}
    u = UNIT_ROUNDOFF[dtype]
    tol = three_sigma(cfg.MVIT.DEPTH, u)
    for rev in (False, True):
        worst = max(err[rev], key=err[rev].get)
        print(f"{name} {dtype} {'reversible' if rev else 'plain'}: worst {worst} {err[rev][worst]:.2e} (tolerance {tol:.2e})")
        assert err[rev][worst] <= tol, ("reversible" if rev else "plain", worst, err[rev][worst], tol)
    # The reversible backward recomputes each block from float32 streams rebuilt to float32 rounding; a
    # recomputed low-precision op differs from the forward's only where that moves a value across a
    # rounding boundary, by one rounding: the reversible path may be further from float32 by u, not more.
    # That gain-of-one argument fails after a low-precision pooling conv: the LayerNorm that follows it
    # (norm_q, norm_k) divides a flipped rounding by the spread of nearly equal channels, a gain no
    # rounding count bounds (the CPU test saw 5.2e-3 with a bfloat16 pool conv). CUDA autocast runs that
    # conv in the autocast dtype, so for MViT only the rounding bound above holds.
    if name == "rev_vit":
        excess = {n: err[True][n] - err[False][n] for n in ref}
        worst = max(excess, key=excess.get)
        assert excess[worst] <= u, (worst, excess[worst])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("how", ["autocast", "module"])
@pytest.mark.parametrize("frames", [1, 2], ids=["image", "video"])
def test_pool_conv_weight_gradient_is_exact_under_cudnn(dtype, how, frames, device, numerics):
    """With entries in {-1, 0, 1} every product and partial sum of the depthwise pooling conv is an integer
    of magnitude at most 128 (an output sums 27 taps; a weight gradient 4 samples x 2 x 4 x 4 positions),
    exact in float16 (11 bits), bfloat16 (8 bits) and float32: any correct cuDNN kernel returns the float64 gradients exactly, on the permuted
    (channels-last) view that attention_pool passes, for image (1 frame) and video grids."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-1, 2, (4, frames, 8, 8, 8), generator=g).double().permute(0, 4, 1, 2, 3)
    weight = torch.randint(-1, 2, (8, 1, 3, 3, 3), generator=g).double()
    stride, padding = (1, 2, 2), (1, 1, 1)
    x_ref, w_ref = x.clone().requires_grad_(), weight.clone().requires_grad_()
    out_ref = F.conv3d(x_ref, w_ref, stride=stride, padding=padding, groups=8)
    grad_out = torch.randint(-1, 2, out_ref.shape, generator=g).double()
    expected, expected_w = torch.autograd.grad(out_ref, (x_ref, w_ref), grad_out)

    conv = PoolConv3d(8, 8, 3, stride=stride, padding=padding, groups=8, bias=False).to(device)
    with torch.no_grad():
        conv.weight.copy_(weight)
    if how == "autocast":
        inp = x.float().to(device).requires_grad_()
        with torch.autocast("cuda", dtype=dtype):
            out = conv(inp)
    else:
        conv = conv.to(dtype)
        inp = x.to(device=device, dtype=dtype).requires_grad_()
        out = conv(inp)
    assert out.dtype == dtype  # cuDNN really ran the low-precision conv
    out.backward(grad_out.to(device=device, dtype=out.dtype))
    assert torch.equal(conv.weight.grad.double().cpu(), expected_w)
    assert torch.equal(inp.grad.double().cpu(), expected)
