"""Reversible transformer encoder: activation memory that does not grow with depth.

The mechanism
-------------
A reversible block keeps two streams and computes

    Y1 = X1 + F(X2)        F = LayerNorm + attention   (module ``.F``, + drop path)
    Y2 = X2 + G(Y1)        G = LayerNorm + MLP         (module ``.G``, + drop path)

which can be inverted, whatever F and G are: X2 = Y2 - G(Y1), X1 = Y1 - F(X2). So a block's
inputs need not be stored: they can be rebuilt from its outputs. Consecutive reversible blocks form
a stack. In training each block runs as one ``RevBackProp`` node, which records no graph inside the
block; the only activation a stack keeps is its output [Y1, Y2], one tensor saved by the top block's
node, which whatever consumes it (a stage transition, the tail's norm) keeps too, without a second
copy. Backward walks the blocks top-down; each block

  1. takes its outputs (Y1, Y2) and their gradients (dY1, dY2) from the block above,
  2. recomputes G(Y1) with grad enabled, backpropagates dY2 through it, and rebuilds X2 = Y2 - G(Y1),
  3. recomputes F(X2) likewise, backpropagates dX1 = dY1 + dY2·∂G/∂Y1 through it, rebuilds X1,
  4. hands (X1, X2) and (dX1, dX2) to the block below (``StackCarry``): they are that block's
     outputs and gradients. The bottom block hands on the gradients alone: nobody reads its inputs.

Activation memory is that of one block, whatever the depth, for one extra forward of each block.

Why it is correct
-----------------
- The recomputation equals the forward. G(Y1) in backward must be the G(Y1) that was added in
  forward, or X2 = Y2 - G(Y1) is wrong. The weights have not changed (the optimizer steps after
  backward); randomness is replayed (``RNGSnapshot``: the generator state before each stochastic
  branch, restored for its recomputation); autocast and the SDPA kernel selection are re-entered
  as they were (``ForwardContext``), so a caller's ``torch.autocast`` or ``sdpa_kernel`` around the
  forward alone acts as under plain autograd. What remains is the rounding of one add and one
  subtract per block, which is why the streams are float32 whatever the compute dtype.
- The carry holds the right tensors when a block reads it. Block i's outputs are block i+1's inputs
  and nothing else's, so node i+1 depends on node i, and autograd runs a node's backward only after
  every node that used its outputs: block i+1's backward finishes before block i's starts, and what
  it leaves in the carry (its rebuilt inputs) is exactly block i's outputs. Each stack of each
  forward gets its own carry, which knows its top and bottom blocks.
- Parameter gradients are exact and arrive early. Each block's backward calls
  ``torch.autograd.backward`` on its recomputed branch, which accumulates into ``.grad`` as plain
  autograd would, block by block while the backward goes on: DDP reduces the top blocks' buckets
  while the bottom blocks are recomputed, and FSDP2 unshards a branch in its forward pre-hook and
  reduce-scatters its gradients after its backward (F and G are called as modules). A kept ``.grad``
  is added to in place, with no second gradient-sized buffer. The price: ``torch.autograd.grad(loss,
  encoder_params)`` does not see the encoder's parameters (torch raises "appears to not have been
  used in the graph"); use ``loss.backward()``, or set ``encoder.use_rev_backprop = False`` for plain
  autograd through the same blocks.
- A stack is differentiated even when its input does not require grad (a frozen stem): autograd
  records a Function node only if some tensor input requires grad, and the blocks' parameters are
  not inputs of the Function. The bottom block of such a stack gets an ``anchor``, an empty tensor
  that requires grad, so its node (and hence every node above it) is recorded.

Drop path follows the official training code by default (``MVIT.REV.DROP_PATH_MODE block``): one
per-sample mask per reversible block, shared by F and G. ``branch`` draws a mask per branch.
Stage transitions (``blocks.StageTransitionBlock``) change resolution and width, so they cannot be
inverted; they are ordinary autograd modules between stacks.
"""

from contextlib import ExitStack, contextmanager, nullcontext

import torch
from timm.layers import drop_path
from torch import nn

from .attention import SDPASelection
from .blocks import AttentionSubBlock, MLPSubBlock, maybe_checkpoint


# -------------------------------------------------------------------------------------------------
# Replaying the forward's randomness and context during the recomputation.
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


class ForwardContext:
    """The forward's autocast settings and SDPA backend selection, re-entered for the recomputation in backward.

    Both are state of the caller's (``torch.autocast``, ``sdpa_kernel``) that the backward, run after the
    caller's contexts have exited, would not see. ``torch.amp.custom_fwd/custom_bwd`` replay autocast for a
    single device type fixed at decoration time; the encoder runs on whatever device its input lives on,
    so autocast is captured per device. The SDPA selection: see ``SDPASelection``.
    """

    _DEVICES = ("cpu", "cuda")

    def __init__(self):
        self.autocast = {d: (torch.is_autocast_enabled(d), torch.get_autocast_dtype(d)) for d in self._DEVICES}
        self.sdpa = SDPASelection()

    @contextmanager
    def restore(self):
        devices = self._DEVICES if torch.cuda.is_available() else ("cpu",)
        with ExitStack() as stack:
            for d in devices:
                enabled, dtype = self.autocast[d]
                stack.enter_context(torch.autocast(d, dtype=dtype, enabled=enabled))
            stack.enter_context(self.sdpa.restore())
            yield


# -------------------------------------------------------------------------------------------------
# Blocks.
# -------------------------------------------------------------------------------------------------
def sample_mask(x, rate, training):
    """Per-sample drop-path mask (0 or 1/keep) shaped to broadcast over ``x``; None when inactive."""
    if not training or rate == 0:
        return None
    return drop_path(x.new_ones((x.shape[0],) + (1,) * (x.ndim - 1)), rate, training)


# -------------------------------------------------------------------------------------------------
# Blocks.
# -------------------------------------------------------------------------------------------------
class ReversibleBlock(nn.Module):
    """Y1 = X1 + F(X2), Y2 = X2 + G(Y1); invertible, so its inputs need not be stored."""

    def __init__(self, dim, num_heads, thw, mlp_ratio, drop_path_rate, norm_layer, drop_path_mode="block", **attn_kwargs):
        super().__init__()
        self.drop_path_rate = drop_path_rate
        self.drop_path_mode = drop_path_mode
        self.F = AttentionSubBlock(dim, dim, num_heads, thw, norm_layer, **attn_kwargs)
        self.G = MLPSubBlock(dim, mlp_ratio, norm_layer)
        self.stochastic = drop_path_rate > 0 or attn_kwargs.get("drop_rate", 0) > 0

    def block_mask(self, x):
        """The one mask F and G share (official semantics); None in branch mode or when inactive."""
        return sample_mask(x, self.drop_path_rate, self.training) if self.drop_path_mode == "block" else None

    def _branch(self, module, x, mask):
        out = module(x)  # called as a module, so FSDP2's hooks unshard it, also in the recomputation
        if mask is not None:
            return out * mask
        return drop_path(out, self.drop_path_rate if self.drop_path_mode == "branch" else 0.0, self.training)

    def branch_f(self, x, mask):
        """The F branch: F(x) under drop path, the term added to X1."""
        return self._branch(self.F, x, mask)

    def branch_g(self, x, mask):
        """The G branch: G(x) under drop path, the term added to X2."""
        return self._branch(self.G, x, mask)

    def forward(self, x1, x2):
        """Plain autograd path (evaluation, and the reference the custom backward is tested against)."""
        mask = self.block_mask(x1)
        y1 = x1 + self.branch_f(x2, mask)
        y2 = x2 + self.branch_g(y1, mask)
        return y1, y2

    def _snapshot(self, x):
        return RNGSnapshot(x.device) if self.stochastic and self.training else None

    def forward_recording(self, x1, x2):
        """Forward without a graph; returns the outputs and the RNG snapshots backward replays."""
        snap_f = self._snapshot(x2)  # taken before the mask: replaying it draws the same mask again
        mask = self.block_mask(x1)
        y1 = x1 + self.branch_f(x2, mask)
        snap_g = self._snapshot(y1)
        y2 = x2 + self.branch_g(y1, mask)
        return y1, y2, (snap_f, snap_g)

    @staticmethod
    def _recompute(branch, x, grad_out, snapshot):
        """Re-run ``branch`` at ``x`` (replaying its randomness) and backpropagate ``grad_out``.

        The branch's parameter gradients are accumulated into ``.grad`` here; returns the branch
        output (no graph) and the gradient w.r.t. ``x``.
        """
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            with snapshot.replay() if snapshot else nullcontext():
                out = branch(x)
            torch.autograd.backward(out, grad_out)
        return out.detach(), x.grad

    def backward_pass(self, y1, y2, dy1, dy2, snapshots, rebuild_inputs=True):
        """Reconstruct (X1, X2) from (Y1, Y2), backpropagate (dY1, dY2) through the block, accumulate
        its parameter gradients; returns the inputs (None unless ``rebuild_inputs``: the bottom block
        of a stack needs X2 for F but nobody needs the pair) and their gradients dX1, dX2."""
        snap_f, snap_g = snapshots
        # The block's drop-path mask is drawn again rather than stored: memory stays flat in depth.
        # Forward drew it first thing after snap_f, so replaying snap_f draws it again (y1 has x1's shape).
        with snap_f.replay() if snap_f else nullcontext():
            mask = self.block_mask(y1)
        # Y2 = X2 + G(Y1): undo G, and add the path through G to Y1's gradient.
        g_y1, dy1_from_g = self._recompute(lambda y: self.branch_g(y, mask), y1, dy2, snap_g)
        x2 = y2 - g_y1
        dx1 = dy1 + dy1_from_g
        del g_y1, dy1_from_g
        # Y1 = X1 + F(X2): undo F, and add the path through F to X2's gradient. Under snap_f the mask
        # is drawn first again, then F's own dropout: the forward's order of draws.
        f_x2, dx2_from_f = self._recompute(lambda x: self.branch_f(x, self.block_mask(x)), x2, dx1, snap_f)
        inputs = (y1 - f_x2, x2) if rebuild_inputs else None
        del f_x2
        dx2 = dy2 + dx2_from_f
        return inputs, dx1, dx2


# -------------------------------------------------------------------------------------------------
# The custom backward: one autograd node per block.
# -------------------------------------------------------------------------------------------------
class StackCarry:
    """Hands a block's reconstructed inputs, during backward, to the block below (whose outputs they are).

    Only the top block of a stack keeps its outputs (saved by autograd); every other block's outputs
    are dropped once the block above has consumed them, and come back through here. Safe because
    autograd runs block i+1's backward before block i's (block i's outputs are block i+1's inputs and
    nobody else's), so the carry holds block i's outputs exactly when block i's backward reads them;
    it holds one pair of streams at a time, and none once the bottom block, whose inputs nobody reads,
    has run.
    """

    def __init__(self, blocks):
        self.top, self.bottom = blocks[-1], blocks[0]
        self.streams = None


class RevBackProp(torch.autograd.Function):
    """Run one ReversibleBlock keeping nothing (but the top block's output); recompute it in backward.

    Inputs: the block, its stack's carry, the two streams, and ``anchor``: None, or an empty tensor
    that requires grad, so that this node is recorded although no stream requires grad (see the module
    docstring). Outputs: the two streams, or, for the top block, the stack's output [Y1, Y2], the one
    tensor it saves. Backward returns dX1 and dX2 for the streams and None for the other inputs.
    """

    @staticmethod
    def forward(ctx, block, carry, x1, x2, anchor):
        ctx.block, ctx.carry = block, carry
        ctx.context = ForwardContext()
        y1, y2, ctx.snapshots = block.forward_recording(x1, x2)
        if block is not carry.top:
            return y1, y2
        y = torch.cat([y1, y2], dim=-1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, *grads):
        if ctx.block is ctx.carry.top:
            (y,), (dy,) = ctx.saved_tensors, grads
            (y1, y2), (dy1, dy2) = y.chunk(2, dim=-1), dy.chunk(2, dim=-1)
        else:
            (y1, y2), (dy1, dy2) = ctx.carry.streams, grads
        ctx.carry.streams = None  # not needed any more: the rebuilt inputs replace them
        bottom = ctx.block is ctx.carry.bottom
        with ctx.context.restore():
            inputs, dx1, dx2 = ctx.block.backward_pass(y1, y2, dy1, dy2, ctx.snapshots, rebuild_inputs=not bottom)
        ctx.carry.streams = inputs  # the outputs of the block below; None below the bottom block
        return None, None, dx1, dx2, None


# -------------------------------------------------------------------------------------------------
# The encoder.
# -------------------------------------------------------------------------------------------------
class ReversibleEncoder(nn.Module):
    """Blocks in order; consecutive ReversibleBlocks form one stack, each block its own RevBackProp node.

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

    @staticmethod
    def _two_streams(x):
        """[x, x] on channels, in at least float32 whatever the parameter or autocast dtype: the streams
        are reconstructed as X = Y - F(X), which in bfloat16/float16 would drift from the forward's X.
        (The patch embedding under autocast, or FSDP2's param_dtype, hands the encoder bf16/fp16 tokens.)"""
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return torch.cat([x, x], dim=-1)

    def _run_stack(self, x, blocks):
        x1, x2 = x.chunk(2, dim=-1)
        if self.training and self.use_rev_backprop and torch.is_grad_enabled():
            carry = StackCarry(blocks)  # one per stack and forward
            # Only the bottom block may need the anchor: the blocks above take its outputs, which require grad.
            anchor = None if x.requires_grad else torch.empty(0, device=x.device, requires_grad=True)
            for block in blocks[:-1]:
                x1, x2 = RevBackProp.apply(block, carry, x1, x2, anchor)
                anchor = None
            return RevBackProp.apply(blocks[-1], carry, x1, x2, anchor)  # the top returns [Y1, Y2]
        for block in blocks:
            x1, x2 = block(x1, x2)
        return torch.cat([x1, x2], dim=-1)

    def forward(self, x):
        two_streams = False
        for reversible, idx in self.segments:
            if not two_streams:
                x, two_streams = self._two_streams(x), True
            if reversible:
                x = self._run_stack(x, [self.layers[i] for i in idx])
            else:
                x = maybe_checkpoint(self.checkpoint_transitions and self.training, self.layers[idx[0]], x)
                two_streams = False
        if not two_streams:
            x = self._two_streams(x)
        return nn.functional.dropout(x, p=self.dropout_rate, training=self.training)
