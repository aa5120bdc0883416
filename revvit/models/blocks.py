"""The layers of MViT and Rev-MViT: patch embedding, two-stream fusion, the non-reversible block, the
reversible block's F and G, and the stage transition between reversible stacks."""

import math
from contextlib import nullcontext

import torch
from timm.layers import DropPath, Mlp, drop_path
from torch import nn
from torch.utils.checkpoint import checkpoint

from revvit.config.options import parse_fusion

from .attention import MultiScaleAttention, SDPASelection, attention_pool, residual_max_pool


def _replay_sdpa_selection():
    """``context_fn`` of a checkpoint: the recomputation runs under the forward's SDPA selection.

    torch's checkpoint replays the forward's RNG state and autocast but not ``sdpa_kernel``'s selection,
    so a caller's ``sdpa_kernel`` around the forward alone would make the recomputation pick another kernel.
    """
    return nullcontext(), SDPASelection().restore()


def maybe_checkpoint(enabled, fn, *args):
    """Run ``fn(*args)``, recomputing its activations in backward when ``enabled`` (MODEL.ACT_CHECKPOINT)."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False, context_fn=_replay_sdpa_selection)
    return fn(*args)


class PatchEmbed(nn.Module):
    """Patchify an image ``[B, C, H, W]`` or a clip ``[B, C, T, H, W]`` into tokens ``[B, THW, D]``."""

    def __init__(self, dim_in, dim_out, kernel, stride, padding, conv_2d):
        super().__init__()
        conv = nn.Conv2d if conv_2d else nn.Conv3d
        self.proj = conv(dim_in, dim_out, kernel_size=kernel, stride=stride, padding=padding)

    def forward(self, x):
        x = self.proj(x)
        thw = [1, *x.shape[2:]] if x.ndim == 4 else list(x.shape[2:])
        return x.flatten(2).transpose(1, 2), thw


class TwoStreamFusion(nn.Module):
    """Merge the two reversible streams, concatenated on channels, into one tensor.

    Modes: ``add``/``max``/``min``/``avg`` of the halves; ``concat`` keeps both (identity);
    ``concat_linear[_mult[_drop]]`` adds a residual MLP over the concatenation, optionally after a
    LayerNorm (``ln+`` prefix). The names follow PySlowFast's MVIT.REV.*_FUSION options.
    """

    _REDUCTIONS = {
        "add": lambda a, b: a + b,
        "max": torch.maximum,
        "min": torch.minimum,
        "avg": lambda a, b: (a + b) / 2,
    }

    def __init__(self, mode, dim):
        super().__init__()
        spec = parse_fusion(mode)
        if spec is None:
            raise ValueError(f"unknown two-stream fusion '{mode}'")
        self.mode = mode
        self.fuse_fn = None
        if spec.kind == "concat_linear":
            mlp = Mlp(dim, hidden_features=int(dim * spec.mlp_ratio), out_features=dim, act_layer=nn.GELU, drop=spec.dropout)
            self.fuse_fn = nn.Sequential(nn.LayerNorm(dim), mlp) if spec.layernorm else mlp

    @classmethod
    def keeps_both(cls, mode):
        """Whether ``mode`` outputs both streams (2C channels) rather than reducing them to C."""
        return mode not in cls._REDUCTIONS

    @property
    def keeps_both_streams(self):
        return self.keeps_both(self.mode)

    def forward(self, x):
        if self.mode in self._REDUCTIONS:
            return self._REDUCTIONS[self.mode](*x.chunk(2, dim=-1))
        if self.fuse_fn is None:
            return x
        return x + self.fuse_fn(x)


class MultiScaleBlock(nn.Module):
    """Pre-norm MViT block (the non-reversible twin): attention and MLP residuals.

    When width grows, the residual is projected (after attention with ``dim_mul_in_att``, after the
    MLP norm otherwise); when Q is pooled, the residual is max-pooled to the new grid.
    """

    def __init__(
        self,
        dim,
        dim_out,
        num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_rate=0.0,
        drop_path=0.0,
        layer_scale_init_value=0.0,
        norm_layer=nn.LayerNorm,
        kernel_q=(),
        kernel_kv=(),
        stride_q=(),
        stride_kv=(),
        mode="conv",
        has_cls_embed=True,
        residual_pooling=False,
        dim_mul_in_att=False,
        separate_qkv=False,
    ):
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.dim_mul_in_att = dim_mul_in_att
        self.has_cls_embed = has_cls_embed
        att_dim = dim_out if dim_mul_in_att else dim
        self.norm1 = norm_layer(dim)
        self.attn = MultiScaleAttention(
            dim,
            att_dim,
            num_heads=num_heads,
            qkv_bias=qkv_bias,
            drop_rate=drop_rate,
            kernel_q=kernel_q,
            kernel_kv=kernel_kv,
            stride_q=stride_q,
            stride_kv=stride_kv,
            norm_layer=norm_layer,
            has_cls_embed=has_cls_embed,
            mode=mode,
            residual_pooling=residual_pooling,
            separate_qkv=separate_qkv,
        )
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(att_dim)
        self.mlp = Mlp(att_dim, hidden_features=int(att_dim * mlp_ratio), out_features=dim_out, act_layer=nn.GELU, drop=drop_rate)
        if layer_scale_init_value > 0:
            self.gamma_1 = nn.Parameter(layer_scale_init_value * torch.ones(att_dim))
            self.gamma_2 = nn.Parameter(layer_scale_init_value * torch.ones(dim_out))
        else:
            self.gamma_1 = self.gamma_2 = None
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)
        self.pool_skip = residual_max_pool(stride_q) if len(stride_q) and math.prod(stride_q) > 1 else None

    def _scale(self, x, gamma):
        return x if gamma is None else gamma * x

    def forward(self, x, thw):
        x_norm = self.norm1(x)
        x_attn, thw_new = self.attn(x_norm, thw)
        if self.dim_mul_in_att and self.dim != self.dim_out:
            x = self.proj(x_norm)
        x_res, _ = attention_pool(x.unsqueeze(1), self.pool_skip, thw, self.has_cls_embed)
        x = x_res.squeeze(1) + self.drop_path(self._scale(x_attn, self.gamma_1))
        x_norm = self.norm2(x)
        x_mlp = self.mlp(x_norm)
        if not self.dim_mul_in_att and self.dim != self.dim_out:
            x = self.proj(x_norm)
        return x + self.drop_path(self._scale(x_mlp, self.gamma_2)), thw_new


def _not_a_view(out):
    """``out`` as a tensor of its own rather than a view of the 2-D result of its last Linear.

    F and G are FSDP2 units, whose hooks must see every use of their outputs; FSDP2 warns that an
    in-place op on a view could bypass them. The base of this view is a temporary nobody else holds,
    which is the case ``_unsafe_view`` exists for (torch's matmul uses it so): same storage, no copy.
    """
    return torch.ops.aten._unsafe_view(out, out.shape) if out._base is not None else out


class AttentionSubBlock(nn.Module):
    """F: pre-LayerNorm multiscale attention on a fixed token grid."""

    def __init__(self, dim, dim_out, num_heads, thw, norm_layer, **attn_kwargs):
        super().__init__()
        self.thw = list(thw)
        self.norm = norm_layer(dim)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, norm_layer=norm_layer, has_cls_embed=False, **attn_kwargs)

    def forward(self, x):
        return _not_a_view(self.attn(self.norm(x), self.thw)[0])


class MLPSubBlock(nn.Module):
    """G: pre-LayerNorm MLP."""

    def __init__(self, dim, mlp_ratio, norm_layer):
        super().__init__()
        self.norm = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x):
        return _not_a_view(self.mlp(self.norm(x)))


class StageTransitionBlock(nn.Module):
    """Non-reversible block where resolution drops and width grows (Rev-MViT).

    The two streams are first fused (``MVIT.REV.PRE_Q_FUSION``); attention pools Q and projects to
    the new width; the residual path is pooled with the same ``pool_q``/``norm_q`` as Q (RES_PATH
    conv), or max-pooled, and projected when the width changes. Drop path, as in the official code,
    drops the block's whole output, residual included (``block`` mode); ``branch`` mode drops only
    the F and G branches.
    """

    def __init__(self, dim, dim_out, num_heads, thw, mlp_ratio, drop_path_rate, norm_layer, pre_q_fusion, res_path,
                 drop_path_mode="block", **attn_kwargs):
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.drop_path_mode = drop_path_mode
        self.F = AttentionSubBlock(dim, dim_out, num_heads, thw, norm_layer, **attn_kwargs)
        self.G = MLPSubBlock(dim_out, mlp_ratio, norm_layer)
        self.pre_q_fuse = TwoStreamFusion(pre_q_fusion, dim=dim)
        self.res_proj = nn.Linear(dim, dim_out) if dim != dim_out else nn.Identity()
        self.res_path = res_path
        if res_path == "max":
            self.res_pool = residual_max_pool(self.F.attn.pool_q.stride if self.F.attn.pool_q is not None else (1, 1, 1))

    def _pool_residual(self, x):
        attn = self.F.attn
        if self.res_path == "max":
            pooled, _ = attention_pool(x.unsqueeze(1), self.res_pool, self.F.thw, has_cls_embed=False)
            return pooled.squeeze(1)
        b, n, c = x.shape
        per_head = x.reshape(b, n, attn.num_heads, c // attn.num_heads).transpose(1, 2)
        pooled, _ = attention_pool(per_head, attn.pool_q, self.F.thw, has_cls_embed=False, norm=attn.norm_q)
        return pooled.transpose(1, 2).reshape(b, -1, c)

    def forward(self, x):
        branch_rate = self.drop_path_rate if self.drop_path_mode == "branch" else 0.0
        x = self.pre_q_fuse(x)
        residual = self.res_proj(x)
        x = self._pool_residual(residual) + drop_path(self.F(x), branch_rate, self.training)
        x = x + drop_path(self.G(x), branch_rate, self.training)
        return drop_path(x, self.drop_path_rate if self.drop_path_mode == "block" else 0.0, self.training)
