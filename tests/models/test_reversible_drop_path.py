"""Drop path follows the official training code by default; the branch-wise variant stays available."""

from functools import partial

import pytest
import torch
from torch import nn

from revvit.models.blocks import StageTransitionBlock
from revvit.models.reversible import ReversibleBlock

NORM = partial(nn.LayerNorm, eps=1e-6)
BATCH = 64  # P(no sample dropped at rate 0.5) = 2^-64: each assertion below holds for any seed


def dropped_branches(mode):
    """Per sample: was F dropped (Y1 == X1), was G dropped (Y2 == X2)."""
    torch.manual_seed(0)
    block = ReversibleBlock(8, 2, [1, 2, 2], 2.0, 0.5, NORM, drop_path_mode=mode).train()
    x1, x2 = torch.randn(2, BATCH, 4, 8).unbind(0)
    with torch.no_grad():
        y1, y2 = block(x1, x2)
    return (y1 == x1).flatten(1).all(1), (y2 == x2).flatten(1).all(1)


def test_block_mode_drops_f_and_g_of_a_sample_together():
    f_dropped, g_dropped = dropped_branches("block")
    assert torch.equal(f_dropped, g_dropped)
    assert 0 < f_dropped.sum() < BATCH


def test_branch_mode_draws_f_and_g_masks_independently():
    f_dropped, g_dropped = dropped_branches("branch")
    assert not torch.equal(f_dropped, g_dropped)
    assert 0 < f_dropped.sum() < BATCH and 0 < g_dropped.sum() < BATCH


@pytest.mark.parametrize("mode", ["block", "branch"])
def test_transition_drops_whole_output_only_in_block_mode(mode):
    torch.manual_seed(0)
    block = StageTransitionBlock(
        8, 16, 2, [1, 4, 4], 2.0, 0.5, NORM, pre_q_fusion="avg", res_path="conv", drop_path_mode=mode,
        kernel_q=[1, 3, 3], stride_q=[1, 2, 2], kernel_kv=[1, 3, 3], stride_kv=[1, 2, 2],
    ).train()
    with torch.no_grad():
        out = block(torch.randn(BATCH, 16, 16))
    zero = (out == 0).flatten(1).all(1)
    if mode == "block":
        assert 0 < zero.sum() < BATCH
    else:  # the pooled residual survives every drop
        assert zero.sum() == 0
