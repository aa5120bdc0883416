"""train_step on CUDA: fp16 with GradScaler unscales before clipping; at most one host sync per step."""

import copy
import warnings

import pytest
import torch

from cudarun import DTYPES, batch, precision_opts, train_cfg
from revvit.engine.losses import build_loss
from revvit.engine.train import LossGuard, train_step
from revvit.models import build_model
from revvit.solver import build_optimizer

INIT_SCALE = 2.0**10  # small enough that the tiny model's first scaled backward cannot overflow float16
U_FP16 = 2.0**-11


def setup(device, precision, *opts):
    cfg = train_cfg(*precision_opts(precision), *opts)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    scaler = torch.amp.GradScaler("cuda", init_scale=INIT_SCALE, enabled=precision == "fp16")
    return cfg, model, build_optimizer(model, cfg), scaler, build_loss(cfg)


def test_fp16_gradscaler_step_unscales_before_clipping(device, numerics):
    """The norm is measured, and the gradients clipped, on unscaled gradients: the reported norm is the
    one an unscaled fp16 backward gives, and the clipped gradients have norm CLIP_GRAD_L2NORM (clipping
    the scaled ones would leave CLIP / scale). Scaling by a power of two changes no mantissa, so the two
    backward passes round identically; one float16 rounding (2**-11) covers kernels that sum in another order."""
    clip = 0.01
    cfg, model, opt, scaler, loss_fn = setup(device, "fp16", "SOLVER.CLIP_GRAD_L2NORM", str(clip))
    inputs, labels = batch(cfg, device)
    reference = copy.deepcopy(model)
    torch.manual_seed(11)
    with torch.autocast("cuda", dtype=torch.float16):
        loss = loss_fn(reference(inputs), labels)
    (loss * INIT_SCALE).backward()
    expected = torch.nn.utils.get_total_norm([p.grad / INIT_SCALE for p in reference.parameters()]).item()

    seen = []
    hook = model.head.projection.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = [p.detach().clone() for p in model.parameters()]
    torch.manual_seed(11)
    *_, norm = train_step(model, opt, scaler, loss_fn, inputs, labels, cfg, device)
    hook.remove()
    assert seen == [torch.float16]
    assert scaler.get_scale() == INIT_SCALE  # no inf found: the step was taken, not skipped
    assert float(norm) == pytest.approx(expected, rel=U_FP16) and expected > clip
    clipped = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    assert clipped == pytest.approx(clip, rel=1e-3)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("precision", list(DTYPES))
def test_one_host_sync_per_step(precision, device):
    """Issue 14: at most one device-to-host synchronisation per training step on CUDA (the job-wide loss
    the guards read), with the loss guard on and clipping on. torch's sync debug mode warns at every
    synchronising call (.item(), .tolist(), a blocking copy to the host, nonzero, ...); they are counted
    over one step after two warm-up steps (allocations, cuBLAS handles and the scaler's first state)."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bfloat16")
    cfg, model, opt, scaler, loss_fn = setup(device, precision, "SOLVER.CLIP_GRAD_L2NORM", "1.0",
                                            "TRAIN.KILL_LOSS_EXPLOSION_FACTOR", "10.0")
    guard = LossGuard(cfg.TRAIN.KILL_LOSS_EXPLOSION_FACTOR)
    inputs, labels = batch(cfg, device)
    for i in range(2):
        train_step(model, opt, scaler, loss_fn, inputs, labels, cfg, device, guard, (0, i))
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            result = train_step(model, opt, scaler, loss_fn, inputs, labels, cfg, device, guard, (0, 2))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, f"{len(syncs)} host syncs in one {precision} step:\n" + "\n".join(syncs)
    assert all(v == v for v in map(float, result))  # the results are usable numbers (one more sync is fine here)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_cpu_checkpoint_resumes_with_the_fused_optimizer(precision, device):
    """A CPU run's optimizer state (unfused: its step counts are CPU tensors) loaded where the optimizer is
    fused: keep_implementation puts the counts on the GPU, where the fused kernel reads them."""
    from revvit.solver import keep_implementation

    cfg, cpu_model, cpu_opt, _, loss_fn = setup(torch.device("cpu"), "fp32")
    cpu_scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_step(cpu_model, cpu_opt, cpu_scaler, loss_fn, *batch(cfg, torch.device("cpu")), cfg, torch.device("cpu"))
    cfg, model, opt, scaler, loss_fn = setup(device, precision)
    model.load_state_dict(cpu_model.state_dict())
    opt.load_state_dict(cpu_opt.state_dict())
    keep_implementation(opt)
    assert all(g["fused"] for g in opt.param_groups)
    loss, *_ = train_step(model, opt, scaler, loss_fn, *batch(cfg, device), cfg, device)
    torch.cuda.synchronize(device)
    assert loss == loss
    assert opt.state and all(s["step"].device == p.device and s["step"].item() == 2.0 for p, s in opt.state.items())
