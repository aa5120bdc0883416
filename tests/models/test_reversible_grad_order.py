"""Each reversible block's gradients reach .grad (and DDP/FSDP hooks) as soon as its own backward is done."""

import torch

from helpers import TINY_VIT, make_cfg
from revvit.models import build_model


def test_top_block_gradients_arrive_before_the_bottom_block_is_recomputed():
    torch.manual_seed(0)
    model = build_model(make_cfg("configs/ImageNet/REV_VIT_B.yaml", [*TINY_VIT, "MVIT.DEPTH", "6"])).train()
    blocks = list(model.rev_backbone.layers)
    events = []
    for i, block in enumerate(blocks):
        for p in block.parameters():
            p.register_post_accumulate_grad_hook(lambda p, i=i: events.append(("grad", i)))
    loss = model([torch.randn(2, 3, 32, 32)]).sum()
    for i, block in enumerate(blocks):  # registered after the forward: these fire in the recomputation only
        block.G.register_forward_pre_hook(lambda *_, i=i: events.append(("recompute", i)))
    loss.backward()
    print("backward events:", [f"{kind}{i}" for kind, i in dict.fromkeys(events)])
    grads_of = {i: [n for n, (kind, j) in enumerate(events) if kind == "grad" and j == i] for i in range(len(blocks))}
    recompute_of = {j: n for n, (kind, j) in enumerate(events) if kind == "recompute"}
    per_block = sum(1 for _ in blocks[0].parameters())
    for i in range(len(blocks)):
        assert len(grads_of[i]) == per_block
        # all of block i's gradients are in .grad before block i-1 is recomputed
        if i > 0:
            assert max(grads_of[i]) < recompute_of[i - 1]
    assert max(grads_of[len(blocks) - 1]) < recompute_of[0]
