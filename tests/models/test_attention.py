"""The pooling rules of MViT, written once in models/attention.py and used by every block."""

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from revvit.models.attention import _pool_layer, attention_pool, default_pool_kernel, residual_max_pool
from revvit.models.blocks import MultiScaleBlock
from revvit.models.blocks import StageTransitionBlock

NORM = partial(nn.LayerNorm, eps=1e-6)


def test_default_kernel_is_stride_plus_one_on_pooled_axes():
    assert default_pool_kernel([1, 2, 2]) == [1, 3, 3]
    assert default_pool_kernel((2, 4, 1)) == [3, 5, 1]


def test_residual_max_pool_is_the_official_padded_max_pool():
    x = torch.randn(2, 5, 2, 8, 8)
    expected = F.max_pool3d(x, kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
    assert torch.equal(residual_max_pool([1, 2, 2])(x), expected)  # max is exact: no tolerance


def test_both_residual_max_pools_land_on_the_grid_of_pooled_q():
    pools = dict(kernel_q=[1, 3, 3], stride_q=[1, 2, 2], kernel_kv=[1, 3, 3], stride_kv=[1, 2, 2])
    transition = StageTransitionBlock(8, 16, 2, [1, 4, 4], 2.0, 0.0, NORM, pre_q_fusion="avg", res_path="max", **pools)
    twin = MultiScaleBlock(8, 16, 2, norm_layer=NORM, has_cls_embed=False, **pools)
    x = torch.randn(3, 16, 8)
    with torch.no_grad():
        assert transition(torch.cat([x, x], -1)).shape == (3, 4, 16)  # 4x4 tokens -> 2x2
        out, thw = twin(x, [1, 4, 4])
    assert out.shape == (3, 4, 16) and thw == [1, 2, 2]
    assert transition.res_pool.kernel_size == twin.pool_skip.kernel_size == [1, 3, 3]


@pytest.mark.parametrize("thw,kernel", [([1, 4, 4], [1, 3, 3]), ([2, 4, 4], [3, 3, 3])])  # image, video grids
def test_pool_conv_weight_gradient_has_the_weights_strides(thw, kernel):
    """DDP warns "grad strides do not match bucket view strides" when a gradient's strides differ from its
    bucket view's, which are the parameter's: the channels-last input of the pooling conv made its weight
    gradient differ on the size-1 dimension (is_contiguous() ignores it; DDP does not)."""
    channels = 8
    pool, _ = _pool_layer("conv", kernel, [1, 2, 2], channels, NORM)
    x = torch.randn(2, 3, math.prod(thw), channels, requires_grad=True)  # [B, heads, tokens, head dim]
    for _ in range(2):  # first gradient (stolen into .grad) and an accumulated one
        out, _ = attention_pool(x, pool, thw, has_cls_embed=False)
        out.square().sum().backward()
        assert pool.weight.grad.stride() == pool.weight.stride()
