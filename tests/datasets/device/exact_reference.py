"""Exact references for the on-device RandAugment, and CUDA's TF32 played on the CPU.

Under the trainer's math modes (``precision.set_math_modes``: TF32 on) CUDA rounds the float32 inputs of
matrix products and convolutions to TF32, a 10-bit mantissa. ``TF32`` does the same to every such op
run on the CPU inside it, so a test here shows what a GPU would compute, without one.
"""

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

aten = torch.ops.aten

# A float32 result of a few operations on float32 values: each rounding moves it by at most 2**-24
# of its size (round to nearest).
FLOAT32_ROUNDING = 2.0**-24


def tf32(t):
    """``t`` rounded to TF32 (11 significant bits, to nearest) where it is a float32 tensor."""
    if not (isinstance(t, torch.Tensor) and t.dtype == torch.float32):
        return t
    mantissa, exponent = torch.frexp(t)  # |mantissa| in [0.5, 1): 11 bits are mantissa * 2**11 rounded
    return torch.ldexp(torch.round(mantissa * 2048.0) / 2048.0, exponent)


class TF32(TorchDispatchMode):
    """Inside it, the float32 inputs of every matrix product and convolution are rounded to TF32."""

    OPS = {aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default, aten.mv.default,
           aten.addmv.default, aten.dot.default, aten.convolution.default}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.OPS:
            args, kwargs = tree_map(tf32, (args, kwargs))
        return func(*args, **kwargs)


# Rotate (degrees), shear and translate (pixels or fractions of the crop) as RandAugment draws them for a
# 224 crop, timm's levels at m9 and beyond.
GEOMETRIC_DRAWS = [("Rotate", 27.0), ("Rotate", -30.0), ("ShearX", 0.3), ("ShearY", -0.27), ("TranslateXRel", 0.41),
                   ("TranslateY", -100)]


def source_points_reference(matrices, h, w):
    """``(exact, bound)``, float64 ``[N, H, W, 2]``: PIL's sampling coordinates of output pixel centres
    (u, v) = (j + 0.5, i + 0.5), ``(a u + b v + c, d u + e v + f)``, computed in float64 from the float64
    matrices, and how far a float32 computation ``(a u + b v) + c`` may be from them.

    Derivation of the bound: u, v (half-integers below 2**23) are exact in float32. The term a u passes
    through four roundings (a to float32, the product, the sum with b v, the sum with c), as does b v;
    c through two. Each multiplies by (1 + d), |d| <= 2**-24, so the error is at most
    ((1 + 2**-24)**4 - 1)(|a u| + |b v| + |c|) < 4.001 * 2**-24 * (|a u| + |b v| + |c|). The float64
    reference's own error is about 2**-53 of the same sum, far below.
    """
    m = np.asarray(matrices, dtype=np.float64).reshape(-1, 2, 3, 1, 1)
    u = np.arange(w, dtype=np.float64)[None, :] + 0.5
    v = np.arange(h, dtype=np.float64)[:, None] + 0.5
    exact = np.stack([m[:, k, 0] * u + m[:, k, 1] * v + m[:, k, 2] for k in (0, 1)], -1)
    size = np.stack([np.abs(m[:, k, 0] * u) + np.abs(m[:, k, 1] * v) + np.abs(m[:, k, 2]) for k in (0, 1)], -1)
    return exact, 4.001 * FLOAT32_ROUNDING * size


def smooth_reference(x):
    """PIL's ``ImageFilter.SMOOTH`` of uint8 ``[N, C, H, W]`` in integers: interior pixels
    round(S / 13) with S = the 3x3 sum + 4 x the centre (kernel 1, centre 5), the border unchanged.
    round(S / 13) = floor((2 S + 13) / 26): 13 is odd, so S / 13 is never a tie."""
    x = np.asarray(x, dtype=np.int64)
    h, w = x.shape[-2:]
    s = sum(x[..., i : h - 2 + i, j : w - 2 + j] for i in range(3) for j in range(3)) + 4 * x[..., 1:-1, 1:-1]
    out = x.copy()
    out[..., 1:-1, 1:-1] = (2 * s + 13) // 26
    return out.astype(np.uint8)
