"""Reversible transformer encoder: activation memory that does not grow with depth.

A reversible block keeps two streams and computes

    Y1 = X1 + F(X2)        F = LayerNorm + attention   (+ drop path)
    Y2 = X2 + G(Y1)        G = LayerNorm + MLP         (+ drop path)

which can be inverted exactly: X2 = Y2 - G(Y1), X1 = Y1 - F(X2). ``RevBackProp`` runs a stack of
such blocks without recording a graph and keeps only the stack's output. Its backward walks the
blocks top-down, recomputes each block's F and G with grad enabled from the reconstructed inputs,
and backpropagates through them one block at a time, so the activation memory of training is that
of one block, whatever the depth, at the cost of one extra forward pass.

Stage transitions (``StageTransitionBlock``) change resolution and width, so they cannot be
inverted; they are ordinary autograd modules between reversible stacks.
"""

from contextlib import contextmanager

import torch
from timm.layers import Mlp, drop_path
from torch import nn

from .attention import attention_pool, MultiScaleAttention
from .blocks import TwoStreamFusion, maybe_checkpoint


# -------------------------------------------------------------------------------------------------
# Replaying randomness and mixed precision during the recomputation.
# -------------------------------------------------------------------------------------------------
class RNGSnapshot:
    """Generator state taken just before a stochastic sub-block ran (drop path, dropout).

    ``replay()`` runs code from that state and then puts the generators back, so the recomputed
    masks equal the forward ones and the random stream seen by the rest of training is untouched.
    Seeding the global generator instead (as the official code does) would make training
    irreproducible under a fixed ``torch.manual_seed``.
    """

    def __init__(self, device):
        self.cpu_state = torch.get_rng_state()
        self.cuda_device = device if device.type == "cuda" else None
        self.cuda_state = torch.cuda.get_rng_state(device) if self.cuda_device is not None else None

    @contextmanager
    def replay(self):
        devices = [self.cuda_device] if self.cuda_device is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if self.cuda_device is not None:
                torch.cuda.set_rng_state(self.cuda_state, self.cuda_device)
            yield


@contextmanager
def _no_snapshot():
    yield


class AutocastState:
    """The autocast settings of the forward pass, re-entered for the recomputation in backward.

    ``torch.amp.custom_fwd/custom_bwd`` do this for a single device type fixed at decoration time;
    the encoder runs on whatever device its input lives on, so the state is captured per device.
    """

    _DEVICES = ("cpu", "cuda")

    def __init__(self):
        self.states = {d: (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in self._DEVICES}

    @contextmanager
    def restore(self):
        with torch.autocast("cpu", dtype=self.states["cpu"][1], enabled=self.states["cpu"][0]):
            if torch.cuda.is_available():
                with torch.autocast("cuda", dtype=self.states["cuda"][1], enabled=self.states["cuda"][0]):
                    yield
            else:
                yield


# -------------------------------------------------------------------------------------------------
# The two residual functions of a block.
# -------------------------------------------------------------------------------------------------
class AttentionSubBlock(nn.Module):
    """F: pre-LayerNorm multiscale attention on a fixed token grid."""

    def __init__(self, dim, dim_out, num_heads, thw, norm_layer, **attn_kwargs):
        super().__init__()
        self.thw = list(thw)
        self.norm = norm_layer(dim)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, norm_layer=norm_layer, has_cls_embed=False, **attn_kwargs)

    def forward(self, x):
        return self.attn(self.norm(x), self.thw)[0]


class MLPSubBlock(nn.Module):
    """G: pre-LayerNorm MLP."""

    def __init__(self, dim, mlp_ratio, norm_layer):
        super().__init__()
        self.norm = norm_layer(dim)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x):
        return self.mlp(self.norm(x))


# -------------------------------------------------------------------------------------------------
# Blocks.
# -------------------------------------------------------------------------------------------------
class ReversibleBlock(nn.Module):
    """Y1 = X1 + F(X2), Y2 = X2 + G(Y1); invertible, so its inputs need not be stored."""

    def __init__(self, dim, num_heads, thw, mlp_ratio, drop_path_rate, norm_layer, **attn_kwargs):
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.F = AttentionSubBlock(dim, dim, num_heads, thw, norm_layer, **attn_kwargs)
        self.G = MLPSubBlock(dim, mlp_ratio, norm_layer)
        self.stochastic = drop_path_rate > 0 or attn_kwargs.get("drop_rate", 0) > 0

    def f(self, x):
        return drop_path(self.F(x), self.drop_path_rate, self.training)

    def g(self, x):
        return drop_path(self.G(x), self.drop_path_rate, self.training)

    def forward(self, x1, x2):
        """Plain autograd path (evaluation, and the reference the custom backward is tested against)."""
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return y1, y2

    def _snapshot(self, x):
        return RNGSnapshot(x.device) if self.stochastic and self.training else None

    def forward_recording(self, x1, x2):
        """Forward without a graph; returns the outputs and the RNG snapshots backward replays."""
        snap_f = self._snapshot(x2)
        y1 = x1 + self.f(x2)
        snap_g = self._snapshot(y1)
        y2 = x2 + self.g(y1)
        return y1, y2, (snap_f, snap_g)

    @staticmethod
    def _recompute(branch, x, grad_out, snapshot, params):
        """Re-run ``branch`` at ``x`` (replaying its randomness) and backpropagate ``grad_out``.

        Returns the branch output (no graph), the gradient w.r.t. ``x`` and those of ``params``.
        """
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            with snapshot.replay() if snapshot else _no_snapshot():
                out = branch(x)
            dx, *dparams = torch.autograd.grad(out, [x, *params], grad_out, materialize_grads=True)
        return out.detach(), dx, dparams

    def backward_pass(self, y1, y2, dy1, dy2, snapshots):
        """Reconstruct (X1, X2) from (Y1, Y2) and backpropagate (dY1, dY2) through the block.

        Returns the inputs, their gradients and the gradients of this block's parameters (in
        ``self.parameters()`` order, None where a parameter is frozen).
        """
        snap_f, snap_g = snapshots
        g_params = [p for p in self.G.parameters() if p.requires_grad]
        f_params = [p for p in self.F.parameters() if p.requires_grad]

        # Y2 = X2 + G(Y1): undo G, and add the path through G to Y1's gradient.
        g_y1, dy1_from_g, dg = self._recompute(self.g, y1, dy2, snap_g, g_params)
        x2 = y2 - g_y1
        dx1 = dy1 + dy1_from_g
        # Y1 = X1 + F(X2): undo F, and add the path through F to X2's gradient.
        f_x2, dx2_from_f, df = self._recompute(self.f, x2, dx1, snap_f, f_params)
        x1 = y1 - f_x2
        dx2 = dy2 + dx2_from_f

        grads = dict(zip(map(id, g_params + f_params), dg + df))
        return x1, x2, dx1, dx2, [grads.get(id(p)) for p in self.parameters()]


class StageTransitionBlock(nn.Module):
    """Non-reversible block where resolution drops and width grows (Rev-MViT).

    The two streams are first fused (``MVIT.REV.PRE_Q_FUSION``); attention pools Q and projects to
    the new width; the residual path is pooled with the same ``pool_q``/``norm_q`` as Q (RES_PATH
    conv), or max-pooled, and projected when the width changes. The official code applies drop path
    to the whole output of this block, which also drops the residual stream; here, as in every other
    block, only the F and G branches are dropped.
    """

    def __init__(self, dim, dim_out, num_heads, thw, mlp_ratio, drop_path_rate, norm_layer, pre_q_fusion, res_path, **attn_kwargs):
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.F = AttentionSubBlock(dim, dim_out, num_heads, thw, norm_layer, **attn_kwargs)
        self.G = MLPSubBlock(dim_out, mlp_ratio, norm_layer)
        self.pre_q_fuse = TwoStreamFusion(pre_q_fusion, dim=dim)
        self.res_proj = nn.Linear(dim, dim_out) if dim != dim_out else None
        self.res_pool = None
        if res_path == "max":
            stride = self.F.attn.pool_q.stride if self.F.attn.pool_q is not None else (1, 1, 1)
            kernel = [s + 1 if s > 1 else s for s in stride]
            self.res_pool = nn.MaxPool3d(kernel, stride, [k // 2 for k in kernel])

    def _pool_residual(self, x):
        attn = self.F.attn
        if self.res_pool is not None:
            pooled, _ = attention_pool(x.unsqueeze(1), self.res_pool, self.F.thw, has_cls_embed=False)
            return pooled.squeeze(1)
        b, n, c = x.shape
        per_head = x.reshape(b, n, attn.num_heads, c // attn.num_heads).transpose(1, 2)
        pooled, _ = attention_pool(per_head, attn.pool_q, self.F.thw, has_cls_embed=False, norm=attn.norm_q)
        return pooled.transpose(1, 2).reshape(b, -1, c)

    def forward(self, x):
        x = self.pre_q_fuse(x)
        residual = self.res_proj(x) if self.res_proj is not None else x
        x = self._pool_residual(residual) + drop_path(self.F(x), self.drop_path_rate, self.training)
        return x + drop_path(self.G(x), self.drop_path_rate, self.training)


# -------------------------------------------------------------------------------------------------
# The custom backward.
# -------------------------------------------------------------------------------------------------
class RevBackProp(torch.autograd.Function):
    """Run a stack of ReversibleBlocks keeping only its output; recompute everything in backward.

    Parameters are passed as inputs so that autograd asks for (and DDP's hooks receive) their
    gradients like any other op's: ``torch.autograd.grad`` on a loss and gradient hooks work, and
    the stack is differentiated even when its input does not require grad.
    """

    @staticmethod
    def forward(ctx, x, blocks, *params):
        ctx.blocks = blocks
        ctx.autocast = AutocastState()
        ctx.snapshots = []
        x1, x2 = x.chunk(2, dim=-1)
        for block in blocks:
            x1, x2, snaps = block.forward_recording(x1, x2)
            ctx.snapshots.append(snaps)
        y = torch.cat([x1, x2], dim=-1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        y1, y2 = y.chunk(2, dim=-1)
        dy1, dy2 = dy.chunk(2, dim=-1)
        param_grads = []
        with ctx.autocast.restore():
            for block, snaps in zip(reversed(ctx.blocks), reversed(ctx.snapshots)):
                y1, y2, dy1, dy2, grads = block.backward_pass(y1, y2, dy1, dy2, snaps)
                param_grads.append(grads)
        flat = [g for grads in reversed(param_grads) for g in grads]
        return (torch.cat([dy1, dy2], dim=-1), None, *flat)


# -------------------------------------------------------------------------------------------------
# The encoder.
# -------------------------------------------------------------------------------------------------
class ReversibleEncoder(nn.Module):
    """Blocks in order; consecutive ReversibleBlocks form one RevBackProp stack.

    Reversible stacks and transitions consume two streams concatenated on channels; a transition
    outputs one. Wherever one stream meets a two-stream consumer (the encoder input, the output of
    a transition) it is duplicated, so the encoder always ends with two streams for the tail.
    """

    def __init__(self, layers, dropout_rate=0.0, checkpoint_transitions=False):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.dropout_rate = dropout_rate
        self.checkpoint_transitions = checkpoint_transitions  # MODEL.ACT_CHECKPOINT
        self.use_rev_backprop = True  # False: plain autograd through the same blocks (reference)
        self.segments = []  # (is_reversible, [layer indices])
        for i, layer in enumerate(layers):
            reversible = isinstance(layer, ReversibleBlock)
            if reversible and self.segments and self.segments[-1][0]:
                self.segments[-1][1].append(i)
            else:
                self.segments.append((reversible, [i]))

    def _run_stack(self, x, blocks):
        if self.training and self.use_rev_backprop and torch.is_grad_enabled():
            params = [p for b in blocks for p in b.parameters()]
            return RevBackProp.apply(x, blocks, *params)
        x1, x2 = x.chunk(2, dim=-1)
        for block in blocks:
            x1, x2 = block(x1, x2)
        return torch.cat([x1, x2], dim=-1)

    def forward(self, x):
        two_streams = False
        for reversible, idx in self.segments:
            if not two_streams:
                x, two_streams = torch.cat([x, x], dim=-1), True
            if reversible:
                x = self._run_stack(x, [self.layers[i] for i in idx])
            else:
                x = maybe_checkpoint(self.checkpoint_transitions and self.training, self.layers[idx[0]], x)
                two_streams = False
        if not two_streams:
            x = torch.cat([x, x], dim=-1)
        return nn.functional.dropout(x, p=self.dropout_rate, training=self.training)
