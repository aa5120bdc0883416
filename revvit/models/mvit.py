"""MViT / ViT: patch embedding + positions -> encoder (reversible or not) -> norm -> head.

Rev-ViT is the same model with no pooling and no stage transitions. The block geometry (widths,
heads, pooling kernels and strides, token grids) is derived from the config exactly as the official
builder derives it, so the published checkpoints load with ``strict=True``.
"""

import math
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from .attention import default_pool_kernel
from .blocks import MultiScaleBlock, PatchEmbed, StageTransitionBlock, TwoStreamFusion, maybe_checkpoint
from .head import TransformerBasicHead
from .reversible import ReversibleBlock, ReversibleEncoder


def round_width(width, multiplier, min_width=1, divisor=1):
    """Scale a width and round it to a multiple of ``divisor`` (at least 90% of the exact value)."""
    if not multiplier:
        return width
    width *= multiplier
    min_width = min_width or divisor
    out = max(min_width, int(width + divisor / 2) // divisor * divisor)
    if out < 0.9 * width:
        out += divisor
    return int(out)


@dataclass
class BlockSpec:
    """Geometry of one encoder block."""

    dim: int
    dim_out: int
    num_heads: int
    thw: list  # token grid entering the block
    drop_path: float
    kernel_q: list = field(default_factory=list)
    stride_q: list = field(default_factory=list)
    kernel_kv: list = field(default_factory=list)
    stride_kv: list = field(default_factory=list)
    transition: bool = False

    def pooling(self):
        """The pooling keyword arguments of the block's attention (and of its residual)."""
        return dict(kernel_q=self.kernel_q, stride_q=self.stride_q, kernel_kv=self.kernel_kv, stride_kv=self.stride_kv)


def _multipliers(entries, depth):
    mul = [1.0] * (depth + 1)
    for index, value in entries:
        mul[index] = float(value)
    return mul


def _pooling_schedule(m):
    """Per-block (kernel_q, stride_q, kernel_kv, stride_kv), K/V strides adapted to Q pooling."""
    depth = m.DEPTH
    stride_q = [[] for _ in range(depth)]
    for index, *stride in m.POOL_Q_STRIDE:
        stride_q[index] = list(stride)
    stride_kv = [[] for _ in range(depth)]
    if m.POOL_KV_STRIDE_ADAPTIVE is not None:
        current = list(m.POOL_KV_STRIDE_ADAPTIVE)
        for i in range(depth):
            if stride_q[i]:
                current = [max(s // q, 1) for s, q in zip(current, stride_q[i])]
            stride_kv[i] = list(current)
    else:
        for index, *stride in m.POOL_KV_STRIDE:
            stride_kv[index] = list(stride)

    def kernel(stride):
        if not stride:
            return []
        if m.POOL_KVQ_KERNEL is not None:
            return list(m.POOL_KVQ_KERNEL)
        return default_pool_kernel(stride)

    return [(kernel(sq), sq, kernel(skv), skv) for sq, skv in zip(stride_q, stride_kv)]


def patch_grid(cfg):
    """Token grid (T, H, W) after the patch embedding."""
    stride = list(cfg.MVIT.PATCH_STRIDE)
    if cfg.MVIT.PATCH_2D:
        stride = [1] + stride
    frames = 1 if cfg.MVIT.PATCH_2D else cfg.DATA.NUM_FRAMES
    size = cfg.DATA.TRAIN_CROP_SIZE
    return [frames // stride[0], size // stride[1], size // stride[2]]


def block_specs(cfg):
    """Geometry of every block, reversible (width grows inside a transition's attention) or not."""
    m = cfg.MVIT
    depth, rev = m.DEPTH, m.REV.ENABLE
    dim_mul, head_mul = _multipliers(m.DIM_MUL, depth), _multipliers(m.HEAD_MUL, depth)
    dpr = torch.linspace(0, m.DROPPATH_RATE, depth).tolist()
    pools = _pooling_schedule(m)
    keep_both = TwoStreamFusion.keeps_both(m.REV.PRE_Q_FUSION)

    specs, thw = [], patch_grid(cfg)
    heads, dim = m.NUM_HEADS, m.EMBED_DIM
    for i in range(depth):
        heads = round_width(heads, head_mul[i])
        next_heads = round_width(heads, head_mul[i + 1])
        if rev:
            dim = round_width(dim, dim_mul[i - 1] if i > 0 else 1.0, divisor=heads)
            dim_out = round_width(dim, dim_mul[i], divisor=next_heads)
            transition = i in m.REV.BUFFER_LAYERS
            dim_in = 2 * dim if transition and keep_both else dim
        elif m.DIM_MUL_IN_ATT:
            dim_in, dim_out, transition = dim, round_width(dim, dim_mul[i], divisor=heads), False
        else:
            dim_in, dim_out, transition = dim, round_width(dim, dim_mul[i + 1], divisor=next_heads), False
        kq, sq, kkv, skv = pools[i]
        specs.append(BlockSpec(dim_in, dim_out, heads, list(thw), dpr[i], kq, sq, kkv, skv, transition))
        if sq:
            thw = [size // s for size, s in zip(thw, sq)]
        if not rev:
            dim = dim_out
    return specs


class MViT(nn.Module):
    """Multiscale vision transformer for images ([B,3,H,W]) and clips ([B,3,T,H,W]).

    ``model(x)`` returns logits, as a timm model does (``forward_features`` -> ``forward_head``), and so
    does ``model([x])``, a list holding one tensor (PySlowFast's convention), in training and eval mode
    alike. ``MODEL.HEAD_ACT`` is applied by evaluation and prediction (``revvit.engine.evaluate.scores``).
    """

    def __init__(self, cfg):
        super().__init__()
        m = cfg.MVIT
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.cfg_zero_decay_pos_cls = m.ZERO_DECAY_POS_CLS
        self.cls_embed_on = m.CLS_EMBED_ON
        self.sep_pos_embed = m.SEP_POS_EMBED
        self.use_abs_pos = m.USE_ABS_POS
        self.use_mean_pooling = m.USE_MEAN_POOLING
        self.enable_rev = m.REV.ENABLE
        self.act_checkpoint = cfg.MODEL.ACT_CHECKPOINT
        self.patch_dims = patch_grid(cfg)

        # Registration order is the official state-dict order: stem, encoder, tail norm, head.
        self._build_stem(cfg, norm_layer)
        specs = block_specs(cfg)
        if self.enable_rev:
            head_dim = self._build_reversible_encoder(m, specs, norm_layer)
        else:
            head_dim = self._build_plain_encoder(m, specs, norm_layer)
        self.head = TransformerBasicHead(
            head_dim,
            cfg.MODEL.NUM_CLASSES,
            dropout_rate=cfg.MODEL.DROPOUT_RATE,
            detach_final_fc=cfg.MODEL.DETACH_FINAL_FC,
        )
        self._init_weights(m.HEAD_INIT_SCALE)

    def _build_stem(self, cfg, norm_layer):
        """Patch embedding, class token, position embeddings (one table, or spatial + temporal), dropout."""
        m, embed_dim = cfg.MVIT, cfg.MVIT.EMBED_DIM
        self.patch_embed = PatchEmbed(
            cfg.DATA.INPUT_CHANNEL_NUM[0], embed_dim, m.PATCH_KERNEL, m.PATCH_STRIDE, m.PATCH_PADDING, conv_2d=m.PATCH_2D
        )
        if self.cls_embed_on:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if self.use_abs_pos:
            if self.sep_pos_embed:
                t, h, w = self.patch_dims
                self.pos_embed_spatial = nn.Parameter(torch.zeros(1, h * w, embed_dim))
                self.pos_embed_temporal = nn.Parameter(torch.zeros(1, t, embed_dim))
                if self.cls_embed_on:
                    self.pos_embed_class = nn.Parameter(torch.zeros(1, 1, embed_dim))
            else:
                num_tokens = math.prod(self.patch_dims) + int(self.cls_embed_on)
                self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.pos_drop = nn.Dropout(m.DROPOUT_RATE) if m.DROPOUT_RATE > 0 else nn.Identity()
        self.norm_stem = norm_layer(embed_dim) if m.NORM_STEM else nn.Identity()

    @staticmethod
    def _attn_kwargs(m):
        return dict(qkv_bias=m.QKV_BIAS, drop_rate=m.DROPOUT_RATE, mode=m.MODE, separate_qkv=m.SEPARATE_QKV)

    def _build_reversible_encoder(self, m, specs, norm_layer):
        """Reversible stacks and stage transitions, then the tail over two streams; returns the head's input width."""
        self.rev_backbone = ReversibleEncoder(
            [self._reversible_layer(s, m, norm_layer, self._attn_kwargs(m)) for s in specs],
            dropout_rate=m.DROPOUT_RATE,
            checkpoint_transitions=self.act_checkpoint,
        )
        feat_dim = specs[-1].dim_out
        self.fuse = TwoStreamFusion(m.REV.RESPATH_FUSE, dim=2 * feat_dim)
        fused_dim = 2 * feat_dim if self.fuse.keeps_both_streams else feat_dim
        # The official tail normalises the two streams before fusing them, or the fused mean with mean pooling.
        self.norm = norm_layer(fused_dim if self.use_mean_pooling else 2 * feat_dim)
        return fused_dim

    def _build_plain_encoder(self, m, specs, norm_layer):
        """The non-reversible twin: one MultiScaleBlock per spec, then a norm; returns the head's input width."""
        self.blocks = nn.ModuleList(
            MultiScaleBlock(
                dim=s.dim,
                dim_out=s.dim_out,
                num_heads=s.num_heads,
                mlp_ratio=m.MLP_RATIO,
                drop_path=s.drop_path,
                layer_scale_init_value=m.LAYER_SCALE_INIT_VALUE,
                norm_layer=norm_layer,
                has_cls_embed=self.cls_embed_on,
                residual_pooling=m.RESIDUAL_POOLING,
                dim_mul_in_att=m.DIM_MUL_IN_ATT,
                **s.pooling(),
                **self._attn_kwargs(m),
            )
            for s in specs
        )
        self.norm = norm_layer(specs[-1].dim_out)
        return specs[-1].dim_out

    @staticmethod
    def _reversible_layer(spec, m, norm_layer, attn_kwargs):
        pools = spec.pooling()
        if spec.transition:
            return StageTransitionBlock(
                spec.dim, spec.dim_out, spec.num_heads, spec.thw, m.MLP_RATIO, spec.drop_path, norm_layer,
                pre_q_fusion=m.REV.PRE_Q_FUSION, res_path=m.REV.RES_PATH, drop_path_mode=m.REV.DROP_PATH_MODE, **pools,
                **attn_kwargs,
            )
        return ReversibleBlock(
            spec.dim, spec.num_heads, spec.thw, m.MLP_RATIO, spec.drop_path, norm_layer,
            drop_path_mode=m.REV.DROP_PATH_MODE, **pools, **attn_kwargs,
        )

    def _init_weights(self, head_init_scale):
        for p in (getattr(self, n, None) for n in ("pos_embed", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class", "cls_token")):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d, nn.Conv3d)):
                nn.init.trunc_normal_(mod.weight, std=0.02)
                if isinstance(mod, nn.Linear) and mod.bias is not None:
                    nn.init.constant_(mod.bias, 0.02)
            elif isinstance(mod, nn.LayerNorm):
                nn.init.constant_(mod.weight, 1.0)
                nn.init.constant_(mod.bias, 0.02)
        with torch.no_grad():
            self.head.projection.weight.mul_(head_init_scale)
            self.head.projection.bias.mul_(head_init_scale)

    @torch.jit.ignore
    def no_weight_decay(self):
        """Names of parameters that take no weight decay (MVIT.ZERO_DECAY_POS_CLS)."""
        if not self.cfg_zero_decay_pos_cls:
            return set()
        names = {"pos_embed", "pos_embed_spatial", "pos_embed_temporal", "pos_embed_class", "cls_token"}
        return {n for n, _ in self.named_parameters() if n in names}

    def _position_embedding(self):
        if self.sep_pos_embed:
            t, h, w = self.patch_dims
            pos = self.pos_embed_spatial.repeat(1, t, 1) + torch.repeat_interleave(self.pos_embed_temporal, h * w, dim=1)
            if self.cls_embed_on:
                pos = torch.cat([self.pos_embed_class, pos], dim=1)
            return pos
        return self.pos_embed

    def forward_features(self, x):
        """Tokens after the encoder: ``[B, L, C]`` (``[B, L, 2C]`` for the two reversible streams)."""
        x, thw = self.patch_embed(x)
        if thw != self.patch_dims:
            raise ValueError(
                f"input gives a {thw} token grid but the model was built for {self.patch_dims} "
                "(DATA.TRAIN_CROP_SIZE / DATA.NUM_FRAMES / MVIT.PATCH_STRIDE); resize the input to match"
            )
        if self.cls_embed_on:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        if self.use_abs_pos:
            x = x + self._position_embedding()
        x = self.norm_stem(self.pos_drop(x))
        if self.enable_rev:
            return self.rev_backbone(x)
        for block in self.blocks:
            x, thw = maybe_checkpoint(self.act_checkpoint and self.training, block, x, thw)
        return x

    def forward_pool(self, x):
        """Encoder tokens -> one feature vector per sample, as the official tail orders it."""
        if self.enable_rev:
            if self.use_mean_pooling:
                return self.norm(self.fuse(x).mean(1))
            return self.fuse(self.norm(x)).mean(1)
        if self.use_mean_pooling:
            x = x[:, 1:] if self.cls_embed_on else x
            return self.norm(x.mean(1))
        x = self.norm(x)
        return x[:, 0] if self.cls_embed_on else x.mean(1)

    def forward_head(self, x, pre_logits=False):
        """Encoder tokens -> logits (or, with ``pre_logits``, the pooled features the head projects)."""
        return self.head(self.forward_pool(x), pre_logits=pre_logits)

    def forward(self, x):
        if isinstance(x, (list, tuple)):  # PySlowFast's convention: one tensor in a list
            x = x[0]
        return self.forward_head(self.forward_features(x))

