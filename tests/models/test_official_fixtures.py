"""Loading the weights of small official models reproduces their outputs and gradients."""

import os

import pytest
import torch
import torch.nn.functional as F

from helpers import OFFICIAL_CONFIGS, make_cfg, rel_err
from revvit.models import build_model

FIXTURES = ["rev_vit", "rev_mvit_image", "rev_mvit_video"]
REV_BLOCKS = {"rev_vit": 3, "rev_mvit_image": 4, "rev_mvit_video": 4}  # one RevBackProp node per reversible block


def _load(reference_dir, name):
    fx = torch.load(os.path.join(reference_dir, "fixtures", f"{name}.pt"), weights_only=True)
    base = fx["base_config"].split("configs/", 1)[1]
    cfg = make_cfg(os.path.join(OFFICIAL_CONFIGS, base), fx["overrides"])
    model = build_model(cfg)
    model.load_state_dict(fx["state_dict"], strict=True)
    return fx, model


def _count_nodes(grad_fn, name):
    seen, stack, count = set(), [grad_fn], 0
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        count += type(fn).__name__ == name
        stack.extend(f for f, _ in fn.next_functions)
    return count


def _check(model, fx, ref, dtype, grad_tol, out_tol, zero_tol):
    model = model.to(dtype)
    x = fx["input"].to(dtype)
    model.eval()
    with torch.no_grad():
        # The official head applies its softmax (MODEL.HEAD_ACT) in eval mode; here evaluation does.
        probs = model([x]).softmax(dim=1)
    assert torch.allclose(probs.sum(1), torch.ones((), dtype=dtype))
    assert rel_err(probs, ref["eval_logits"].to(dtype)) <= out_tol

    model.train()
    model.zero_grad()
    logits = model([x])
    assert _count_nodes(logits.grad_fn, "RevBackPropBackward") == REV_BLOCKS[fx["name"]]
    assert rel_err(logits, ref["train_logits"].to(dtype)) <= out_tol
    assert rel_err(logits, ref["eval_pre_softmax"].to(dtype)) <= out_tol
    loss = F.cross_entropy(logits, fx["targets"])
    assert abs(loss.item() - ref["loss"].item()) <= out_tol * abs(ref["loss"].item())
    loss.backward()
    worst = 0.0
    for name, p in model.named_parameters():
        if name in fx["zero_grad_params"]:
            assert p.grad.abs().max().item() <= zero_tol, name
        else:
            worst = max(worst, rel_err(p.grad, ref["grads"][name].to(dtype)))
    assert worst <= grad_tol
    return worst


@pytest.mark.parametrize("name", FIXTURES)
def test_float32_outputs_and_gradients(name, reference_dir):
    fx, model = _load(reference_dir, name)
    _check(model, fx, fx, torch.float32, grad_tol=1e-4, out_tol=1e-5, zero_tol=1e-7)


@pytest.mark.parametrize("name", FIXTURES)
def test_float64_outputs_and_gradients(name, reference_dir):
    fx, model = _load(reference_dir, name)
    _check(model, fx, fx["float64"], torch.float64, grad_tol=1e-10, out_tol=1e-10, zero_tol=1e-14)
