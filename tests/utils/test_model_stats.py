"""One FLOP counter for model stats and step benchmarks: torch's formulas, fused attention as its matmuls."""

import torch
import torch.nn.functional as F

from revvit.utils.model_stats import FlopCounter, attention_flops


def test_linear_counts_two_flops_per_multiply_add():
    layer = torch.nn.Linear(16, 8)
    with torch.no_grad(), FlopCounter() as counter:
        layer(torch.randn(5, 16))
    assert counter.total == 2 * 5 * 16 * 8


def test_fused_attention_counts_as_its_two_matmuls_forward_and_four_backward():
    q, k, v = (torch.randn(2, 3, n, 8, requires_grad=True) for n in (5, 7, 7))
    with FlopCounter() as fused:
        out = F.scaled_dot_product_attention(q, k, v)
    with FlopCounter() as explicit:
        (q @ k.transpose(-2, -1)).softmax(-1) @ v
    assert fused.total == explicit.total == attention_flops(q, k, v) == 2 * 2 * 3 * 5 * 7 * (8 + 8)
    with FlopCounter() as backward:
        out.sum().backward()
    assert backward.total == 2 * fused.total


def test_layer_norm_is_counted_at_fvcores_estimate():
    x = torch.randn(3, 4, 8)
    with torch.no_grad(), FlopCounter() as affine:
        torch.nn.LayerNorm(8)(x)
    with torch.no_grad(), FlopCounter() as plain:
        torch.nn.LayerNorm(8, elementwise_affine=False)(x)
    assert (affine.total, plain.total) == (2 * 5 * 96, 2 * 4 * 96)  # multiply-add = 2 units, like torch's formulas
