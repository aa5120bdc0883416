"""timm's RandAugment on a uint8 batch on any device, each image (or clip) with its own draws.

The recipe is timm's own: ``rand_augment_transform`` parses the policy string (``AUG.AA_TYPE``),
and timm's ``RandAugment`` / ``AugmentOp`` code draws, per image, the operations, whether each is
applied, the magnitude noise and the sign, from Python's and NumPy's generators exactly as it does
in a loader worker. We run that code with operations that record their arguments instead of
touching pixels (``plan``), then apply each operation to every image that drew it in one batched
tensor call (``apply``). Same seeds, same draws as timm: the tests check it.

The pixel operations follow PIL's arithmetic (integer luma, truncating blends, PIL's smoothing
kernel, lookup-table posterize / solarize, torchvision's PIL-compatible autocontrast and equalize);
they agree with timm to one grey level. The geometric ones (rotate, shear, translate) use PIL's
coordinates (pixel centres, the same affine matrices, the fill colour outside the image) but sample
with ``grid_sample``, whose bicubic kernel (a = -0.75) is not PIL's (a = -0.5): a difference of a few
grey levels at edges, measured in tests/datasets/device/test_device_augment.py. A clip draws once and every
frame gets the same operations, as in the video recipe.

Nothing here goes through a matrix product or a convolution: under the trainer's math modes CUDA runs
those in TF32, which would move sampling coordinates by a tenth of a pixel and flip roundings of the
smoothing filter. Coordinates are elementwise float32, the filter's sums integer pooling.
"""

import copy

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.auto_augment import rand_augment_transform
from torchvision.transforms.v2 import functional as TF

__all__ = ["BatchRandAugment"]


def host_to_device(t, device):
    """A small host tensor on ``device`` without a host sync: a CUDA copy from pageable memory (and
    ``torch.tensor(..., device="cuda")``) waits for the stream, which would stall the prefetch stream
    once per op; a pinned copy is queued like a kernel."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _per_image(values, x):
    """A ``[N, 1, 1, 1]`` float tensor of per-image values on ``x``'s device."""
    return host_to_device(torch.as_tensor(values, dtype=torch.float32), x.device).view(-1, 1, 1, 1)


def _to_uint8(x):
    """PIL's float -> uint8 of its blends: clip to [0, 255], truncate."""
    return x.clamp_(0, 255).to(torch.uint8)


def _blend(degenerate, image, factor):
    """PIL ``Image.blend(degenerate, image, factor)``: degenerate + factor * (image - degenerate)."""
    degenerate = degenerate.float()
    return _to_uint8(degenerate + _per_image(factor, image) * (image.float() - degenerate))


def _luma(x):
    """PIL's ``convert("L")``: (R*19595 + G*38470 + B*7471 + 2**15) >> 16, as uint8 ``[N, 1, H, W]``."""
    r, g, b = x.int().split(1, dim=1)
    return (r * 19595 + g * 38470 + b * 7471 + 32768).bitwise_right_shift(16).to(torch.uint8)


def _color(x, f):
    return _blend(_luma(x).expand_as(x), x, f)


def _contrast(x, f):
    # PIL: the degenerate image is the mean of the luma, rounded, everywhere.
    mean = _luma(x).float().mean(dim=(1, 2, 3), keepdim=True).add_(0.5).floor_()
    return _blend(mean.expand_as(x), x, f)


def _brightness(x, f):
    return _blend(torch.zeros_like(x), x, f)


def _sharpness(x, f):
    # PIL's ImageFilter.SMOOTH (centre 5, the rest 1, / 13), rounded; the border keeps its pixels. The
    # 3x3 sum is taken in integers (a pooling, never a convolution: cuDNN would run one in TF32 under
    # the trainer's math modes, and 1/13 in TF32 moves a sum by up to 0.06, past a rounding boundary
    # 1/26 away). Sums below 2**24 are exact in float32; S / 13 is never a tie (13 is odd).
    xf = x.float()
    total = F.avg_pool2d(xf, 3, stride=1, divisor_override=1) + 4.0 * xf[..., 1:-1, 1:-1]
    degenerate = x.clone()
    degenerate[..., 1:-1, 1:-1] = total.div_(13.0).round_().to(torch.uint8)
    return _blend(degenerate, x, f)


def _posterize(x, bits):
    mask = torch.as_tensor([(0xFF << (8 - min(8, int(b)))) & 0xFF for b in bits], dtype=torch.uint8)
    return x & host_to_device(mask, x.device).view(-1, 1, 1, 1)


def _solarize(x, thresh):
    return torch.where(x.float() >= _per_image(thresh, x), 255 - x, x)


def _solarize_add(x, add, thresh=128):
    added = (x.int() + _per_image(add, x).int()).clamp_(max=255).to(torch.uint8)
    return torch.where(x < thresh, added, x)


def source_points(matrices, h, w, device):
    """float32 ``[N, H, W, 2]``: the input pixel coordinates (x, y) that output pixel centre (u, v) of
    image ``n`` samples, ``(a u + b v + c, d u + e v + f)`` with ``matrices[n] = (a, b, c, d, e, f)``.

    Elementwise products and sums, never a matrix product: under the trainer's math modes (TF32) CUDA
    rounds a float32 matmul's inputs to a 10-bit mantissa, which moves a coordinate of a 224 crop by
    up to 0.1 px. Here each coordinate is within four float32 roundings of the exact value.
    """
    m = host_to_device(torch.as_tensor(np.asarray(matrices, dtype=np.float32)), device).view(-1, 6, 1, 1)
    u = (torch.arange(w, device=device, dtype=torch.float32) + 0.5).view(1, 1, w)
    v = (torch.arange(h, device=device, dtype=torch.float32) + 0.5).view(1, h, 1)
    a, b, c, d, e, f = m.unbind(1)
    return torch.stack([(a * u + b * v) + c, (d * u + e * v) + f], -1)


def _affine(x, matrices, fill, mode):
    """PIL ``img.transform(size, AFFINE, matrix)``: output pixel centre (u, v) samples the input at
    (a u + b v + c, d u + e v + f), in pixels; outside the input the fill colour."""
    n, _, h, w = x.shape
    src = source_points(matrices, h, w, x.device)
    inside = (src[..., 0] >= 0) & (src[..., 0] < w) & (src[..., 1] >= 0) & (src[..., 1] < h)
    grid = torch.stack([src[..., 0] * (2.0 / w) - 1.0, src[..., 1] * (2.0 / h) - 1.0], -1)
    out = F.grid_sample(x.float(), grid, mode=mode, padding_mode="border", align_corners=False)
    fill = host_to_device(torch.tensor(fill, dtype=torch.float32), x.device).view(1, -1, 1, 1)
    out = torch.where(inside.view(n, 1, h, w), out, fill)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _rotation(degrees, w, h):
    # PIL Image.rotate about the centre, counter-clockwise, no expansion.
    a = -np.deg2rad(degrees)
    cos, sin = np.cos(a), np.sin(a)
    cx, cy = w / 2.0, h / 2.0
    return [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy]


def _geometric(name, value, w, h):
    """The PIL affine matrix of timm's op ``name`` with level argument ``value``."""
    if name == "Rotate":
        return _rotation(value, w, h)
    if name == "ShearX":
        return [1, value, 0, 0, 1, 0]
    if name == "ShearY":
        return [1, 0, 0, value, 1, 0]
    if name == "TranslateXRel":
        return [1, 0, value * w, 0, 1, 0]
    if name == "TranslateYRel":
        return [1, 0, 0, 0, 1, value * h]
    if name == "TranslateX":
        return [1, 0, value, 0, 1, 0]
    return [1, 0, 0, 0, 1, value]  # TranslateY


_GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel", "TranslateX", "TranslateY")
_PIXEL = {
    "AutoContrast": lambda x, _: TF.autocontrast(x),
    "Equalize": lambda x, _: TF.equalize(x),
    "Invert": lambda x, _: 255 - x,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": _color,
    "Contrast": _contrast,
    "Brightness": _brightness,
    "Sharpness": _sharpness,
}
_MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


def _family(name):
    """timm's op name without its variant suffix (PosterizeIncreasing -> Posterize)."""
    for suffix in ("Increasing", "Original"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _known_pixel_ops():
    return {family + suffix for family in _PIXEL for suffix in ("", "Increasing", "Original")}


def _recording(op):
    """A copy of timm's AugmentOp whose operation appends (name, level arguments) instead of editing pixels."""
    rec = copy.copy(op)
    rec.aug_fn = lambda plan, *args, **_: plan + [(op.name, args)]
    return rec


class BatchRandAugment:
    """RandAugment ``policy`` (timm string) over uint8 ``[N, 3, H, W]`` batches on any device."""

    def __init__(self, policy, size, mean=(0.485, 0.456, 0.406), interpolation="bicubic"):
        # The hparams timm's create_transform gives RandAugment for ``size`` crops: the mean colour as
        # fill, absolute translations up to 0.45 of the crop.
        hparams = {"img_mean": tuple(min(255, round(255 * m)) for m in mean), "translate_const": int(size * 0.45)}
        ra = rand_augment_transform(policy, hparams)
        unknown = sorted({op.name for op in ra.ops} - set(_GEOMETRIC) - _known_pixel_ops())
        if unknown:
            raise ValueError(f"RandAugment ops {unknown} of AUG.AA_TYPE '{policy}' have no tensor version; set AUG.ON_DEVICE False.")
        self.policy = policy
        self._recorder = copy.copy(ra)
        self._recorder.ops = [_recording(op) for op in ra.ops]
        self._fill = ra.ops[0].kwargs["fillcolor"]
        self._mode = _MODES.get(interpolation, "bicubic")  # timm's "random" picks bilinear or bicubic: bicubic here

    def plan(self, num):
        """timm's draws for ``num`` images, from Python's and NumPy's global generators: a list per
        image of (op name, level arguments) in the order they are applied."""
        return [self._recorder([]) for _ in range(num)]

    def apply(self, x, plans, frames=1):
        """uint8 ``[N * frames, 3, H, W]`` -> the same after each image's ops; a clip's ``frames``
        consecutive images share its plan."""
        h, w = x.shape[-2:]
        x = x.clone()
        depth = max((len(p) for p in plans), default=0)
        for step in range(depth):
            groups = {}
            for i, p in enumerate(plans):
                if step < len(p):
                    name, args = p[step]
                    groups.setdefault(name, []).append((i, args[0] if args else None))
            for name, members in groups.items():
                images = [i for i, _ in members]
                rows = host_to_device(torch.tensor([i * frames + t for i in images for t in range(frames)]), x.device)
                values = [v for _, v in members for _ in range(frames)]
                x[rows] = self._op(name, x[rows], values, w, h)
        return x

    def _op(self, name, x, values, w, h):
        if name in _GEOMETRIC:
            matrices = [_geometric(name, v, w, h) for v in values]
            return _affine(x, matrices, self._fill, self._mode)
        return _PIXEL[_family(name)](x, values)

