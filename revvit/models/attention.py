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


def attention_pool(x, pool, thw, has_cls_embed, norm=None):
    """Pool per-head tokens ``x`` ``[B, heads, L, C]`` over their ``thw`` grid.

    The class token, when present, bypasses the pooling (it has no grid position) but is normalised
    with the rest. Returns the pooled tokens and their new grid.
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
    if norm is not None:
        x = norm(x)
    return x, new_thw


def _pool_layer(mode, kernel, stride, channels, norm_layer):
    """One pooling op and its norm; ``(None, None)`` when the op would be an identity."""
    if len(kernel) == 0 or (math.prod(kernel) == 1 and math.prod(stride) == 1):
        return None, None
    padding = [k // 2 for k in kernel]
    if mode == "conv":
        conv = nn.Conv3d(channels, channels, kernel, stride=stride, padding=padding, groups=channels, bias=False)
        return conv, norm_layer(channels)
    pool_cls = nn.MaxPool3d if mode == "max" else nn.AvgPool3d
    return pool_cls(kernel, stride, padding, ceil_mode=False), None


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
