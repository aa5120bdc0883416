"""Reversible training memory is flat in depth on the GPU; the non-reversible twin's grows per block.

Measured with the caching allocator's counters (bytes held by tensors, not its cache): the peak of one
training step (forward + backward) over the steady state, in which the weights and their gradients
already exist (kept, zeroed), so the step's own allocations are activations and transients only.

Bounds, from what each way keeps: the twin keeps every block's activations for backward, at least its
input (B x N x C float32, for the LayerNorm backward), so its peak grows by more than that per added
block. The reversible stack keeps one output whatever the depth and recomputes one block at a time, so
in exact accounting its peak does not grow at all; the test allows less than ONE block's twin
activations over all 20 added blocks (allocator rounding to 512-byte blocks, per-node bookkeeping).
"""

import torch
import torch.nn.functional as F

from helpers import TINY_VIT, make_cfg
from revvit.models import build_model

DEPTHS = (4, 12, 24)
BATCH, CROP = 8, 64  # 8 x 8 patches of 8 pixels: 64 tokens of width 32, 64 KiB per stream per block


def step_peak(depth, rev, device):
    cfg = make_cfg("configs/ImageNet/REV_VIT_B.yaml", [*TINY_VIT, "MVIT.DEPTH", str(depth), "MVIT.REV.ENABLE", str(rev),
                                                       "DATA.TRAIN_CROP_SIZE", str(CROP), "DATA.TEST_CROP_SIZE", str(CROP),
                                                       "MVIT.DROPPATH_RATE", "0.1"])
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    x = torch.randn(BATCH, 3, CROP, CROP, device=device)
    y = torch.arange(BATCH, device=device) % cfg.MODEL.NUM_CLASSES
    for p in model.parameters():
        p.grad = torch.zeros_like(p)

    def step():
        F.cross_entropy(model([x]), y).backward()

    step()  # warm-up: cuBLAS/cuDNN workspaces and handles are allocated once, outside the measured peak
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    tokens, width = (CROP // 8) ** 2, cfg.MVIT.EMBED_DIM
    model = None  # frees the weights before the next depth (the closure step() holds the same cell)
    torch.cuda.empty_cache()
    return peak, BATCH * tokens * width * 4


def test_reversible_peak_is_flat_in_depth_and_the_twins_grows(device, numerics):
    rev = {d: step_peak(d, True, device)[0] for d in DEPTHS}
    twin = {d: step_peak(d, False, device)[0] for d in DEPTHS}
    block_input = step_peak(DEPTHS[0], False, device)[1]
    per_block_twin = (twin[DEPTHS[-1]] - twin[DEPTHS[0]]) / (DEPTHS[-1] - DEPTHS[0])
    print(f"step peak over steady state (bytes): reversible {rev}, twin {twin}; twin per block {per_block_twin:.0f}")
    # The twin keeps at least each block's input: its peak grows by more than that per block, at every step.
    for a, b in zip(DEPTHS, DEPTHS[1:]):
        assert twin[b] - twin[a] > (b - a) * block_input, (a, b, twin)
    # Reversible: 20 more blocks cost less than one of the twin's blocks, and the step is far smaller.
    assert max(rev.values()) - min(rev.values()) < per_block_twin, (rev, per_block_twin)
    assert rev[DEPTHS[-1]] < twin[DEPTHS[-1]] / 4
