"""bfloat16 autocast gives float32's gradients up to bfloat16 rounding, on the plain and the reversible path.

Tolerances come from the arithmetic, not from a machine. bfloat16 keeps 8 significant bits, so one
rounding to nearest changes a value by a relative error uniform in [-u, u], u = 2**-8 (standard deviation
u / sqrt(3)). A gradient computed through R such roundings in sequence carries, to first order, a relative
error with standard deviation sqrt(R) * u / sqrt(3) (independent roundings, each passed on with a gain
of about one); the tests allow 3 standard deviations. R counts the roundings CPU autocast makes on the
longest path of one train step (see ``roundings``): 142 for depth 5, a tolerance of 8.1e-2. Measured on
an Intel Xeon (AMX): worst tensor 8.6e-3 (rev_vit), 2.7e-2 (rev_mvit image), 2.8e-2 (rev_mvit video);
before PoolConv3d the video model's pooling-conv weights were off by 0.6 to 5.9.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_MODELS as MODELS, ZERO_GRAD_SUFFIXES, make_cfg
from revvit.models import build_model
from revvit.models.attention import PoolConv3d

U = 2.0**-8  # unit roundoff of bfloat16: 8 significant bits, round to nearest

# Roundings to bfloat16 that autocast makes in one block's forward, along the longest path (parallel
# branches such as k and v count once): attention: LayerNorm output cast for qkv, qkv weight, qkv output,
# q/k/v cast for SDPA, SDPA output, proj weight, proj output (7); MLP: LayerNorm output cast for fc1, fc1
# weight, fc1 output, GELU output, fc2 weight, fc2 output (6). LayerNorm, softmax statistics, the pooling
# conv (on CPU, see PoolConv3d) and the residual sums stay float32. The backward rounds once per forward
# rounding (the gradient of each bfloat16 op is a bfloat16 op).
FORWARD_PER_BLOCK = 13
STEM_AND_HEAD = 6  # patch-embedding conv: input, weight, output; head linear: input, weight, output

# Rounding is the subject: no dropout or drop path, so every pass computes the same function.
NO_DROP = ["MVIT.DROPPATH_RATE", "0.0", "MVIT.DROPOUT_RATE", "0.0", "MODEL.DROPOUT_RATE", "0.0"]


def roundings(depth):
    """bfloat16 roundings on the longest path of a train step (forward and backward) of ``depth`` blocks."""
    return 2 * (FORWARD_PER_BLOCK * depth + STEM_AND_HEAD)


def three_sigma(r):
    """Three standard deviations of the relative error that ``r`` independent bfloat16 roundings leave."""
    return 3 * math.sqrt(r) * U / math.sqrt(3)


def grads(model, x, rev, bf16):
    """Parameter gradients of one cross-entropy step, in float64 for measuring."""
    model.rev_backbone.use_rev_backprop = rev
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model([x])
        loss = F.cross_entropy(logits.float(), torch.arange(x.shape[0]) % logits.shape[1])
    loss.backward()
    return {n: p.grad.double() for n, p in model.named_parameters()}


def rel_errors(got, ref):
    """Per tensor ||got - ref|| / ||ref||; structurally zero gradients are measured against the whole one."""
    whole = torch.cat([g.flatten() for g in ref.values()]).norm()
    return {n: ((got[n] - ref[n]).norm() / (whole if n.endswith(ZERO_GRAD_SUFFIXES) else ref[n].norm())).item()
            for n in ref}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bfloat16_gradients_are_float32_up_to_rounding(name):
    path, opts, shape = MODELS[name]
    torch.manual_seed(0)
    cfg = make_cfg(path, [*opts, *NO_DROP])
    model = build_model(cfg).train()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    ref = grads(model, x, rev=False, bf16=False)
    err = {rev: rel_errors(grads(model, x, rev=rev, bf16=True), ref) for rev in (False, True)}

    depth = cfg.MVIT.DEPTH
    tol = three_sigma(roundings(depth))
    # The reversible backward rebuilds each block's input from its output (X2 = Y2 - G(Y1), X1 = Y1 - F(X2))
    # and recomputes F and G from it. Under autocast the two residual streams are float32 (a float32 plus a
    # bfloat16 tensor is float32), so the rebuilt input equals the forward's up to float32 rounding, about
    # 2**-24 relative; the recomputed bfloat16 ops then round exactly as in the forward except where that
    # change crosses a bfloat16 rounding boundary (probability about 2**-24 / u = 2**-16 per element), and
    # such an element moves by one bfloat16 rounding. So the reversible path may be further from float32
    # than the plain path by one rounding, u, not more (measured on an Intel Xeon: at most 2e-8). This
    # needs the pooling conv in float32: a LayerNorm right after a bfloat16-rounded pooled tensor of
    # nearly equal channels amplifies such a flip (a bfloat16 pool conv gave 5.2e-3 on rev_mvit image).
    margin = U
    for rev, label in ((False, "plain"), (True, "reversible")):
        worst = max(err[rev], key=err[rev].get)
        print(f"{name} {label}: worst {worst} {err[rev][worst]:.2e} (tolerance {tol:.2e})")
        assert err[rev][worst] <= tol, (label, worst, err[rev][worst])
    excess = {n: err[True][n] - err[False][n] for n in ref}
    worst = max(excess, key=excess.get)
    print(f"{name}: reversible - plain worst {worst} {excess[worst]:.2e} (margin {margin:.2e})")
    assert excess[worst] <= margin, (worst, excess[worst])


@pytest.mark.parametrize("bf16", ["autocast", "bfloat16 module"])
def test_pool_conv_weight_gradient_is_exact_on_video_grids(bf16):
    """oneDNN's bfloat16 depthwise Conv3d weight gradient is wrong on channels-last multi-frame input
    (136 of 216 elements on an AVX-512 CPU); PoolConv3d must not reach it. With entries in {-1, 0, 1}
    every product and partial sum is an integer below 256, exact in bfloat16 and float32 alike, so any
    correct kernel returns the float64 gradient exactly, on any CPU."""
    g = torch.Generator().manual_seed(0)
    # [B * heads, C, T, H, W] as a permuted view of [B * heads, T, H, W, C], the layout attention_pool makes.
    x = torch.randint(-1, 2, (4, 2, 8, 8, 8), generator=g).double().permute(0, 4, 1, 2, 3)
    weight = torch.randint(-1, 2, (8, 1, 3, 3, 3), generator=g).double()
    grad_out = torch.randint(-1, 2, (4, 8, 2, 4, 4), generator=g).double()

    conv = PoolConv3d(8, 8, 3, stride=(1, 2, 2), padding=1, groups=8, bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
    x_ref, w_ref = x.clone().requires_grad_(), weight.clone().requires_grad_()
    out_ref = F.conv3d(x_ref, w_ref, stride=(1, 2, 2), padding=1, groups=8)
    expected, expected_w = torch.autograd.grad(out_ref, (x_ref, w_ref), grad_out)

    if bf16 == "autocast":
        inp = x.float().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(inp)
    else:
        conv = conv.bfloat16()
        inp = x.bfloat16().requires_grad_()
        out = conv(inp)
        assert out.dtype == torch.bfloat16
    out.backward(grad_out.to(out.dtype))
    assert torch.equal(conv.weight.grad.double(), expected_w)
    assert torch.equal(inp.grad.double(), expected)
