"""FSDP2 with a bfloat16 param_dtype (MODEL.FSDP with TRAIN.MIXED_PRECISION): the reversible streams stay
float32, into F and G too, so the reversible backward reconstructs its inputs in float32 and FSDP computes
what DDP computes; the all-gathers of one step are counted. 2 gloo processes."""

import math

import pytest
import torch

from revvit.engine.launch import launch

from fsdp_job import fsdp_and_ddp_mixed, fsdp_cfg, rev_vs_plain_mixed

pytestmark = pytest.mark.slow  # every test here spawns processes or trains

# The bound, derived. Plain autograd keeps every activation; the reversible backward recomputes each
# block's inputs, X1 = Y1 - F(X2) and X2 = Y2 - G(Y1), from the same bfloat16 F and G outputs. In float32
# streams each reconstruction rounds at most twice (the add of the forward, the subtract of the backward):
# <= 2 u = 1.2e-7 relative (u = 2^-24 = 6.0e-8), and over the 3 blocks <= 3.6e-7, carried into the
# gradients with a gain of about 1 (each block's Jacobian is I + F', with weights initialised at std 0.02).
# Bound 1e-6. In bfloat16 streams (the fault: FSDP2 casting the stem) the same reconstruction rounds at
# u = 2^-8 = 3.9e-3 per block: measured 6.7e-4 relative, three orders above the bound.
# (Measured: 8e-10. An F or G output in bfloat16 has 8 significant bits, so a float32 stream plus it is
# usually exact, and so is the subtraction.)
TOL = 1e-6


def test_fsdp_bf16_params_keep_float32_streams_and_exact_reversible_gradients(tmp_path):
    cfg = fsdp_cfg("rev_vit", True, tmp_path)
    launch(cfg, rev_vs_plain_mixed)  # FSDP2's "returned a view tensor" warning is an error in the job
    r = torch.load(tmp_path / "mixed.pt", weights_only=True)
    assert r["streams"] == [torch.float32, torch.float32]  # encoder output, reversible and plain runs
    rev, plain = r["grads"][True], r["grads"][False]
    assert set(rev) == set(plain) and all(rev[k].dtype == torch.float32 for k in rev)
    diff = math.sqrt(sum(((rev[k] - plain[k]).double() ** 2).sum().item() for k in rev))
    norm = math.sqrt(sum((plain[k].double() ** 2).sum().item() for k in rev))
    print(f"reversible vs plain autograd, bf16 param_dtype: relative gradient difference {diff / norm:.3g}")
    assert norm > 0 and diff / norm < TOL
    # F and G of every block: gathered for the forward and again for the recomputation; their LayerNorms
    # (float32 units) once, kept from forward to backward; the root once (FSDP2 keeps the root unsharded
    # between forward and backward).
    assert r["gathers"] == (4 + 2) * r["blocks"] + 1


def _relative(a, b):
    return (a - b).double().norm().item() / b.double().norm().item()


# The bound, derived. DDP keeps float32 weights and autocast rounds each one to bfloat16 where a matmul
# reads it; FSDP2 gathers the same rounding (round to nearest even, both); the LayerNorms use float32
# weights in both; and, the streams reaching F and G in float32 in both, every kernel reads the same
# numbers: the logits and the gradients agree exactly (measured: 0), the gradients' cross-process mean
# being (g0 + g1) / 2 either way. BOUND = u / 64 (u = 2^-8 = 3.9e-3, bfloat16's unit roundoff) leaves room
# for a kernel that sums its float32 partials in another order: that moves a sum by about 2^-24 relative,
# which changes its rounding to bfloat16 for about 2^-24 / 2^-8 = 2^-16 of the outputs, each by u, a
# relative difference of about u x sqrt(2^-16) = u / 256 in the norm. The fault, each stream rounded to bfloat16 on its way into each of the 2 x 3 branches,
# perturbs every LayerNorm input by up to u relative: measured 1.5e-3 in the logits, 1.7e-3 in the
# gradients, 24x the bound.
BOUND = 2.0**-8 / 64


def test_fsdp_bf16_computes_what_ddp_computes(tmp_path):
    launch(fsdp_cfg("rev_vit", True, tmp_path), fsdp_and_ddp_mixed)
    r = torch.load(tmp_path / "fsdp_ddp.pt", weights_only=True)
    ddp, fsdp = r["ddp"], r["fsdp"]
    assert ddp["streams"] == fsdp["streams"] == [torch.float32] * 6  # F of each of 3 blocks: forward, recomputation
    logits = _relative(fsdp["logits"], ddp["logits"])
    grads = math.sqrt(sum(((fsdp["grads"][k] - ddp["grads"][k]).double() ** 2).sum().item() for k in ddp["grads"]))
    grads /= math.sqrt(sum((ddp["grads"][k].double() ** 2).sum().item() for k in ddp["grads"]))
    print(f"FSDP bf16 vs DDP bf16 autocast: relative difference {logits:.3g} in the logits, {grads:.3g} in the gradients")
    assert set(fsdp["grads"]) == set(ddp["grads"]) and all(fsdp["grads"][k].dtype == torch.float32 for k in ddp["grads"])
    assert logits < BOUND and grads < BOUND
