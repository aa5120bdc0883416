"""Multiscale pooling attention (MViT).

Queries, keys and values are pooled over the (T, H, W) token grid before attention: pooling Q lowers
the output resolution (a stage transition), pooling K/V makes attention over high-resolution stages
affordable. The per-head pooling convs and LayerNorms keep the parameter names of the official
implementation so that its checkpoints load unchanged.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import _cur_sdpa_kernel_backends, sdpa_kernel


class SDPASelection:
    """The SDPA backends the forward could use (what ``sdpa_kernel`` selected), re-entered for a recomputation.

    A recomputation in backward (reversible blocks, activation checkpointing) runs outside whatever
    ``sdpa_kernel`` the caller wrapped around the forward. Under another selection the recomputed attention
    is another kernel: different rounding (the reconstruction ``X = Y - F(X)`` then drifts from the forward's
    X) and different tensors saved for backward, which torch's checkpoint refuses ("Recomputed values ...
    have different metadata"). The selection is global state, read here the way ``sdpa_kernel`` itself
    saves it (enabled backends in priority order) and re-entered through ``sdpa_kernel``, which puts the
    caller's selection back afterwards.
    """

    def __init__(self):
        self.backends = _cur_sdpa_kernel_backends(with_priority=True)

    def restore(self):
        return sdpa_kernel(self.backends, set_priority=True)


def attention_pool(x, pool, thw, has_cls_embed, norm=nn.Identity()):
    """Pool per-head tokens ``x`` ``[B, heads, L, C]`` over their ``thw`` grid.

    The class token, when present, bypasses the pooling (it has no grid position) but is normalised
    with the rest. Returns the pooled tokens and their new grid. ``pool`` None (no pooling at this
    block) skips the grid's reshapes altogether, which an identity pool would still copy.
    """
    if pool is None:
        return x, list(thw)
    if has_cls_embed:
        cls_tok, x = x[:, :, :1], x[:, :, 1:]
    b, heads, _, c = x.shape
    t, h, w = thw
    grid = x.reshape(b * heads, t, h, w, c).permute(0, 4, 1, 2, 3)
    grid = pool(grid)
    new_thw = list(grid.shape[2:])
    x = grid.reshape(b, heads, c, -1).transpose(2, 3)
    if has_cls_embed:
        x = torch.cat((cls_tok, x), dim=2)
    return norm(x), new_thw


class PoolConv3d(nn.Conv3d):
    """The depthwise Conv3d that pools Q, K or V; on CPU it never runs in bfloat16.

    oneDNN (v3.12, shipped with torch 2.14) computes wrong *weight gradients* for a bfloat16 depthwise
    Conv3d on channels-last input with more than one frame -- the permuted view ``attention_pool`` passes
    in video models -- and not the same ones twice on the same input. Minimal reproduction, Intel Xeon
    (AMX), ``F.conv3d(x, w, stride=(1, 2, 2), padding=1, groups=8)``, x a channels-last [4, 8, 2, 8, 8]:
      random data: weight-gradient error 0.93 of its norm (cosine 0.55) against float32, where bfloat16
        rounding gives 2.8e-3 (contiguous input) or 3.2e-3 (``torch.backends.mkldnn.flags(enabled=False)``);
      entries in {-1, 0, 1} (every product and sum exact in bfloat16, so a correct kernel is exact):
        136 of 216 weight-gradient elements wrong, max error 19 on values up to 17.
    The culprit is the ``jit_bf16:avx512_core_bf16`` backward-weights kernel, not AMX: it is equally
    wrong under ``ONEDNN_MAX_CPU_ISA=AVX512_CORE`` and correct under ``AVX2``, so any AVX-512 CPU (AMD
    Zen 4 too, not measured) is affected. Forward, input gradient, float16 and single-frame (image)
    grids are correct. Hence on CPU this conv runs in float32 under bfloat16 autocast, as autocast does
    for norms, and for bfloat16 inputs: float32 out under autocast (a float32 LayerNorm follows), the
    input's dtype otherwise. It costs nothing measurable: forward + backward of an MViT-B first-stage K/V
    pool (96 channels, 8x56x56, one thread) took 78 ms in float32 against 243 ms in bfloat16. CUDA keeps
    the low-precision conv: oneDNN is CPU-only and cuDNN has its own kernels (not measured here).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight.register_hook(_contiguous_strides)

    def forward(self, x):
        if x.device.type != "cpu" or not _runs_in_bfloat16(x):
            return super().forward(x)
        bias = None if self.bias is None else self.bias.float()
        with torch.autocast("cpu", enabled=False):
            out = self._conv_forward(x.float(), self.weight.float(), bias)
        return out if torch.is_autocast_enabled("cpu") else out.to(x.dtype)


def _contiguous_strides(grad):
    """The pooling conv's weight gradient with the weight's (contiguous) strides.

    ``attention_pool`` feeds the conv a permuted, channels-last view, so its weight gradient
    ``[C, 1, kT, kH, kW]`` comes out channels-last: the same bytes in the same order, but stride 1 on the
    size-1 dimension where the weight has ``kT*kH*kW``. DDP compares the strides of a gradient with those
    of its bucket view (the weight's) and warns "grad strides do not match bucket view strides" when
    they differ. The view below only renames that stride (a copy only if a kernel ever hands over a
    gradient that is not dense in this order)."""
    return grad.reshape(-1).view(grad.shape)


def _runs_in_bfloat16(x):
    """Whether a CPU conv of ``x`` would run in bfloat16: under bfloat16 autocast, or ``x`` is bfloat16."""
    autocast_bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return autocast_bf16 or x.dtype == torch.bfloat16


def default_pool_kernel(stride):
    """The official pooling kernel for ``stride`` when MVIT.POOL_KVQ_KERNEL gives none: s + 1 where s > 1."""
    return [s + 1 if s > 1 else s for s in stride]


def residual_max_pool(stride):
    """Max-pool bringing a residual to the grid of Q pooled with ``stride`` (non-reversible skip, RES_PATH max)."""
    kernel = default_pool_kernel(stride)
    return nn.MaxPool3d(kernel, stride, [k // 2 for k in kernel], ceil_mode=False)


def _pool_layer(mode, kernel, stride, channels, norm_layer):
    """One pooling op and its norm; no op (None, see ``attention_pool``) where it would be an identity."""
    if len(kernel) == 0 or (math.prod(kernel) == 1 and math.prod(stride) == 1):
        return None, nn.Identity()
    padding = [k // 2 for k in kernel]
    if mode == "conv":
        conv = PoolConv3d(channels, channels, kernel, stride=stride, padding=padding, groups=channels, bias=False)
        return conv, norm_layer(channels)
    return _FIXED_POOLS[mode](kernel, stride, padding, ceil_mode=False), nn.Identity()


_FIXED_POOLS = {"max": nn.MaxPool3d, "avg": nn.AvgPool3d}  # MVIT.MODE without weights; "conv" is learned


class MultiScaleAttention(nn.Module):
    """Attention whose Q and K/V token grids are pooled (MViTv2 style: pooling after projection)."""

    def __init__(
        self,
        dim,
        dim_out,
        num_heads,
        qkv_bias=True,
        drop_rate=0.0,
        kernel_q=(),
        kernel_kv=(),
        stride_q=(),
        stride_kv=(),
        norm_layer=nn.LayerNorm,
        has_cls_embed=True,
        mode="conv",
        residual_pooling=False,
        separate_qkv=False,
    ):
        super().__init__()
        if dim_out % num_heads:
            raise ValueError(f"attention width {dim_out} is not divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.dim_out = dim_out
        self.has_cls_embed = has_cls_embed
        self.residual_pooling = residual_pooling
        self.separate_qkv = separate_qkv
        head_dim = dim_out // num_heads

        if separate_qkv:
            self.q = nn.Linear(dim, dim_out, bias=qkv_bias)
            self.k = nn.Linear(dim, dim_out, bias=qkv_bias)
            self.v = nn.Linear(dim, dim_out, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, dim_out * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim_out, dim_out)
        self.proj_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

        # Registration order (pool_q, norm_q, pool_k, ...) is the official state-dict order.
        self.pool_q, self.norm_q = _pool_layer(mode, kernel_q, stride_q, head_dim, norm_layer)
        self.pool_k, self.norm_k = _pool_layer(mode, kernel_kv, stride_kv, head_dim, norm_layer)
        self.pool_v, self.norm_v = _pool_layer(mode, kernel_kv, stride_kv, head_dim, norm_layer)

    def _project(self, x):
        b, n, _ = x.shape
        if self.separate_qkv:
            heads = [proj(x).reshape(b, n, self.num_heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v)]
            return heads
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def forward(self, x, thw):
        """``x`` ``[B, L, dim]`` on grid ``thw`` -> ``[B, L', dim_out]`` on the Q-pooled grid."""
        b = x.shape[0]
        q, k, v = self._project(x)
        q, q_thw = attention_pool(q, self.pool_q, thw, self.has_cls_embed, self.norm_q)
        k, _ = attention_pool(k, self.pool_k, thw, self.has_cls_embed, self.norm_k)
        v, _ = attention_pool(v, self.pool_v, thw, self.has_cls_embed, self.norm_v)

        out = F.scaled_dot_product_attention(q, k, v)
        if self.residual_pooling:
            if self.has_cls_embed:
                out = torch.cat((out[:, :, :1], out[:, :, 1:] + q[:, :, 1:]), dim=2)
            else:
                out = out + q
        out = out.transpose(1, 2).reshape(b, -1, self.dim_out)
        return self.proj_drop(self.proj(out)), q_thw
