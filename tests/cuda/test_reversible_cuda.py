"""RevBackProp on CUDA: the same gradients as plain autograd, the CUDA random stream replayed exactly.

The CPU suite proves this with the CPU generator (tests/models/test_reversible.py); on CUDA, dropout
and drop path draw from the device's Philox generator, which ``RNGSnapshot`` must save and restore
per block. The tolerances are the CPU test's: float64 1e-10 and float32 1e-4 relative (the two paths
sum the same products in different orders, a few hundred roundings of 2**-24 at most).
"""

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_MODELS as MODELS, make_cfg, max_rel_diff
from revvit.models import build_model

STOCHASTIC = ["MVIT.DROPPATH_RATE", "0.3", "MVIT.DROPOUT_RATE", "0.1", "MODEL.DROPOUT_RATE", "0.2"]


def build(name, device, extra=(), dtype=torch.float32):
    path, opts, shape = MODELS[name]
    torch.manual_seed(0)
    model = build_model(make_cfg(path, [*opts, *extra])).to(device=device, dtype=dtype).train()
    x = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1)).to(device)
    return model, x


def step_grads(model, x, rev, seed=123):
    """Logits and input/parameter gradients of one step; every random draw comes from ``seed``."""
    model.rev_backbone.use_rev_backprop = rev
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    torch.manual_seed(seed)  # seeds the CPU and every CUDA generator
    logits = model([x])
    targets = torch.arange(x.shape[0], device=x.device) % logits.shape[1]
    F.cross_entropy(logits, targets).backward()
    grads = {"input": x.grad}
    grads.update({n: p.grad.clone() for n, p in model.named_parameters()})
    return logits.detach(), grads


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("mode", ["block", "branch"])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_revbackprop_matches_autograd_on_cuda(name, mode, dtype, tol, device, numerics):
    model, x = build(name, device, [*STOCHASTIC, "MVIT.REV.DROP_PATH_MODE", mode], dtype)
    logits_rev, rev = step_grads(model, x, rev=True)
    logits_ref, ref = step_grads(model, x, rev=False)
    assert torch.equal(logits_rev, logits_ref)  # the same masks were drawn in the forward
    assert set(rev) == set(ref) and all(g is not None for g in rev.values())
    assert max_rel_diff(rev, ref) <= tol


def test_cuda_masks_are_really_drawn(device, numerics):
    """Guard for the test above: with dropout and drop path on, two seeds give two different outputs."""
    model, x = build("rev_vit", device, STOCHASTIC)
    a, _ = step_grads(model, x, rev=True, seed=1)
    b, _ = step_grads(model, x, rev=True, seed=2)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", ["rev_vit", "rev_mvit_image"])
def test_cuda_rng_state_after_a_step_is_the_plain_steps(name, device, numerics):
    """The backward's replay restores the generators: after a reversible step the CUDA (and CPU) random
    streams stand exactly where a plain autograd step leaves them, so the next batch's masks agree."""
    model, x = build(name, device, STOCHASTIC)
    after = {}
    for rev in (True, False):
        step_grads(model, x, rev=rev, seed=7)
        after[rev] = (torch.cuda.get_rng_state(device), torch.get_rng_state())
    assert torch.equal(after[True][0], after[False][0])
    assert torch.equal(after[True][1], after[False][1])
    torch.manual_seed(7)
    assert not torch.equal(torch.cuda.get_rng_state(device), after[True][0])  # the step did draw numbers


@pytest.mark.parametrize("name", ["rev_vit", "rev_mvit_image"])
def test_cuda_recomputation_runs_the_forwards_sdpa_kernel(name, device, numerics, monkeypatch):
    """On CUDA the backward runs on autograd's device thread, after the caller's ``sdpa_kernel`` has exited;
    every recomputed attention must still run under the forward's selection (here math alone), and the
    gradients must be plain autograd's under that selection."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    flags, sdpa = [], F.scaled_dot_product_attention

    def recording(*args, **kwargs):
        flags.append((torch.backends.cuda.math_sdp_enabled(), torch.backends.cuda.flash_sdp_enabled(),
                      torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.cudnn_sdp_enabled()))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    model, x = build(name, device, dtype=torch.float64)
    grads = {}
    for rev in (True, False):
        model.rev_backbone.use_rev_backprop = rev
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        with sdpa_kernel(SDPBackend.MATH):
            loss = model([x]).logsumexp(1).sum()
        loss.backward()
        grads[rev] = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert flags and set(flags) == {(True, False, False, False)}
    assert max_rel_diff(grads[True], grads[False]) <= 1e-10  # the float64 tolerance of the first test
