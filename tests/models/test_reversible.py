"""RevBackProp (one node per block) is exact, replays randomness, keeps memory flat in depth, and works under autocast."""

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_MODELS as MODELS, TINY_MVIT_IMAGE, TINY_VIT, make_cfg, max_rel_diff
from revvit.models import build_model

STOCHASTIC = ["MVIT.DROPPATH_RATE", "0.3", "MVIT.DROPOUT_RATE", "0.1", "MODEL.DROPOUT_RATE", "0.2"]


def build(name, extra=(), dtype=torch.float32):
    path, opts, shape = MODELS[name]
    torch.manual_seed(0)
    model = build_model(make_cfg(path, [*opts, *extra])).to(dtype).train()
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    return model, x


def train_step_grads(model, x, rev, seed=123):
    """Input and parameter gradients of one train step, all randomness drawn from ``seed``."""
    model.rev_backbone.use_rev_backprop = rev
    model.zero_grad()
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)
    logits = model([x])
    targets = torch.arange(x.shape[0]) % logits.shape[1]
    F.cross_entropy(logits, targets).backward()
    grads = {"input": x.grad}
    grads.update({n: p.grad.clone() for n, p in model.named_parameters()})
    return logits.detach(), grads


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("dtype,tol,mode", [(torch.float64, 1e-10, "block"), (torch.float32, 1e-4, "block"), (torch.float64, 1e-10, "branch")])
def test_revbackprop_matches_autograd_with_drop_path_and_dropout(name, dtype, tol, mode):
    model, x = build(name, [*STOCHASTIC, "MVIT.REV.DROP_PATH_MODE", mode], dtype)
    logits_rev, rev = train_step_grads(model, x, rev=True)
    logits_ref, ref = train_step_grads(model, x, rev=False)
    assert torch.equal(logits_rev, logits_ref)
    assert set(rev) == set(ref)
    assert all(g is not None for g in rev.values())
    assert max_rel_diff(rev, ref) <= tol


def test_stochastic_masks_are_really_drawn():
    """Guard for the test above: with drop path on, different seeds give different logits."""
    model, x = build("rev_vit", STOCHASTIC)
    a, _ = train_step_grads(model, x, rev=True, seed=1)
    b, _ = train_step_grads(model, x, rev=True, seed=2)
    assert not torch.allclose(a, b)


def test_replay_does_not_reseed_the_global_generator():
    model, x = build("rev_mvit_image", STOCHASTIC)
    outs, after = [], []
    for _ in range(2):
        torch.manual_seed(7)
        out = model([x])
        out.sum().backward()
        outs.append(out.detach())
        after.append(torch.rand(4))
    # Same seed, same masks: training is reproducible.
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(after[0], after[1])
    # The backward replay consumed no random numbers: the stream continues as after plain autograd.
    model.rev_backbone.use_rev_backprop = False
    torch.manual_seed(7)
    model([x]).sum().backward()
    assert torch.equal(torch.rand(4), after[0])


def test_frozen_input_still_trains_the_encoder_and_autograd_grad_is_refused():
    """Gradients are accumulated inside each block's backward: backward() reaches the encoder even
    when its input needs no grad, while autograd.grad on encoder parameters is refused by torch
    (they are not inputs of the graph) instead of returning wrong values."""
    model, x = build("rev_vit")
    for p in [*model.patch_embed.parameters(), model.pos_embed]:
        p.requires_grad_(False)
    loss = F.cross_entropy(model([x]), torch.zeros(3, dtype=torch.long))
    loss.backward()
    grads = [p.grad for p in model.rev_backbone.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    params = list(model.rev_backbone.parameters())
    with pytest.raises(RuntimeError, match="not have been used in the graph"):
        torch.autograd.grad(F.cross_entropy(model([x]), torch.zeros(3, dtype=torch.long)), params)


def test_kept_gradients_are_accumulated_in_place():
    """zero_grad(set_to_none=False) keeps .grad; the next backward adds into the same storage."""
    model, x = build("rev_mvit_image")
    torch.manual_seed(3)
    model([x]).sum().backward()
    before = {n: (p.grad.data_ptr(), p.grad.clone()) for n, p in model.named_parameters()}
    torch.manual_seed(3)
    model([x]).sum().backward()
    for n, p in model.named_parameters():
        assert p.grad.data_ptr() == before[n][0], n
        assert torch.allclose(p.grad, 2 * before[n][1], rtol=1e-5, atol=1e-7), n


def saved_activation_bytes(model, x):
    """Bytes autograd keeps for backward during one forward, parameters excluded, storages once."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in param_ptrs:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model([x]).sum()
    loss.backward()
    return sum(seen.values())


def test_saved_bytes_constant_in_depth():
    def measure(depth, rev):
        opts = [*TINY_VIT, "MVIT.DEPTH", str(depth), "MVIT.REV.ENABLE", str(rev)]
        model, x = build("rev_vit", opts)
        return saved_activation_bytes(model, x)

    rev4, rev24 = measure(4, True), measure(24, True)
    plain4, plain24 = measure(4, False), measure(24, False)
    print(f"saved bytes: rev depth4={rev4} depth24={rev24}; non-rev depth4={plain4} depth24={plain24}")
    assert rev24 < 1.10 * rev4
    # The twin stores every block: its saved bytes grow about linearly with depth (24/4 = 6).
    per_block = (plain24 - plain4) / 20
    assert per_block > 0 and 4.0 < plain24 / plain4 < 6.5
    assert rev24 < plain24 / 8


def test_activation_checkpointing_gives_the_same_gradients():
    opts = [*TINY_MVIT_IMAGE, "MVIT.REV.ENABLE", "False", *STOCHASTIC]
    path = MODELS["rev_mvit_image"][0]
    torch.manual_seed(0)
    plain = build_model(make_cfg(path, opts)).train()
    ckpt = build_model(make_cfg(path, [*opts, "MODEL.ACT_CHECKPOINT", "True"])).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(5)
        model([x]).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert max_rel_diff(grads[1], grads[0]) < 1e-5


def test_eval_mode_uses_plain_path_and_returns_the_training_logits():
    """Eval mode runs the blocks without RevBackProp and returns logits, as training does (MODEL.HEAD_ACT is
    evaluation's: revvit.engine.evaluate.scores). The same arithmetic either way: equal to the bit."""
    model, x = build("rev_mvit_image")
    model.eval()
    with torch.no_grad():
        logits = model([x])
        tensor_in = model(x)
    assert logits.shape == (3, 5)
    assert not torch.allclose(logits.sum(1), torch.ones(3))  # not probabilities
    assert torch.equal(logits, tensor_in)
    with torch.enable_grad():
        trained_path = model([x])  # eval mode: dropout and drop path are off, so only the path differs
    torch.testing.assert_close(trained_path, logits, rtol=0, atol=1e-5)


def test_the_stack_output_is_kept_once():
    """The top block's node saves the stack's output [Y1, Y2] as one tensor, and the tail's LayerNorm
    saves that same storage as its input: one copy of the streams, not the two halves and their concatenation."""
    model, x = build("rev_vit")
    tokens, width = (32 // 8) ** 2, 32  # TINY_VIT: 32x32 images, 8x8 patches, width 32
    stream_bytes = x.shape[0] * tokens * width * 4
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in param_ptrs | {x.untyped_storage().data_ptr()}:
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model([x]).sum()
    # Everything else kept (LayerNorm statistics, the head's input) is per token and channel-free, or per image.
    assert sorted(n for n in saved.values() if n >= stream_bytes) == [2 * stream_bytes]
    loss.backward()


@pytest.mark.parametrize("name", ["rev_vit", "rev_mvit_image"])  # one stack of 3 blocks; 3 stacks of 1
def test_the_bottom_block_leaves_nothing_in_the_carry(name, monkeypatch):
    """The bottom block's inputs are nobody's outputs: rebuilt and kept, they would stay alive until the graph
    is freed, through the rest of the backward and the optimizer step."""
    from revvit.models import reversible

    carries = []

    class RecordedCarry(reversible.StackCarry):
        def __init__(self, *args):
            super().__init__(*args)
            carries.append(self)

    monkeypatch.setattr(reversible, "StackCarry", RecordedCarry)
    model, x = build(name)
    loss = model([x]).sum()
    loss.backward()
    assert len(carries) == sum(reversible for reversible, _ in model.rev_backbone.segments)
    assert all(c.streams is None for c in carries)
