"""train_step on CUDA: fp16 with GradScaler unscales before clipping; no host sync in a steady-state step."""

import copy

import pytest
import torch

from cudarun import DTYPES, batch, precision_opts, train_cfg
from revvit.engine.losses import build_loss
from revvit.engine.step import LossGuard, train_step
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
    *_, norm = train_step(model, opt, scaler, loss_fn, inputs, labels, cfg, device).read()
    hook.remove()
    assert seen == [torch.float16]
    assert scaler.get_scale() == INIT_SCALE  # no inf found: the step was taken, not skipped
    assert float(norm) == pytest.approx(expected, rel=U_FP16) and expected > clip
    clipped = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()]).item()
    assert clipped == pytest.approx(clip, rel=1e-3)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("precision", list(DTYPES))
def test_no_host_sync_in_a_steady_state_step(precision, device):
    """The training loop's rhythm, queue step k then read step k-1, makes no device-to-host
    synchronisation: the loss guard decides on the device and the fused optimizer takes its verdict as a
    found-inf flag; the stats come back through pinned memory behind an event (an event wait lets the
    device run on, and is no stream synchronisation). torch's sync debug mode raises at every
    synchronising call (.item(), .tolist() of a device tensor, a blocking copy, nonzero, ...); two
    warm-up steps first (allocations, cuBLAS handles, the scaler's and the guard's first state)."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported(including_emulation=False):
        pytest.skip("this GPU has no native bfloat16")
    cfg, model, opt, scaler, loss_fn = setup(device, precision, "SOLVER.CLIP_GRAD_L2NORM", "1.0",
                                            "TRAIN.KILL_LOSS_EXPLOSION_FACTOR", "10.0")
    assert all(g["fused"] for g in opt.param_groups)
    guard = LossGuard(cfg.TRAIN.KILL_LOSS_EXPLOSION_FACTOR)
    inputs, labels = batch(cfg, device)
    pending = train_step(model, opt, scaler, loss_fn, inputs, labels, cfg, device, guard, (0, 0))
    for i in range(1, 4):
        steady = i == 3
        if steady:
            torch.cuda.synchronize(device)
            torch.cuda.set_sync_debug_mode("error")
        try:
            taken = train_step(model, opt, scaler, loss_fn, inputs, labels, cfg, device, guard, (0, i))
            result = pending.read()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        pending = taken
    assert all(v == v for v in result) and result[0] > 0
    assert pending.read()[0] > 0 and guard.seen == 4


def test_a_nan_loss_on_cuda_leaves_the_weights_of_the_step_before(device):
    """The fused kernel told found-inf on the device skips the update and takes its step counts back; the
    step after the bad one (queued before the read) is skipped too; the read names the bad step."""
    from revvit.engine.step import NonFiniteLossError

    cfg, model, opt, scaler, loss_fn = setup(device, "fp32", "MVIT.DROPPATH_RATE", "0.0")
    inputs, labels = batch(cfg, device)
    train_step(model, opt, scaler, loss_fn, inputs, labels, cfg, device).read()
    weights = copy.deepcopy(model.state_dict())
    moments = copy.deepcopy(opt.state_dict()["state"])
    guard = LossGuard(0.0)
    spoiled = [inputs[0].clone()]
    spoiled[0][0, 0, 0, 0] = float("nan")
    bad = train_step(model, opt, scaler, loss_fn, spoiled, labels, cfg, device, guard, (0, 1))
    train_step(model, opt, scaler, loss_fn, inputs, labels, cfg, device, guard, (0, 2))
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 1, iteration 2"):
        bad.read()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    state = opt.state_dict()["state"]
    assert all(torch.equal(moments[i][k], state[i][k]) for i in moments for k in moments[i])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_cpu_checkpoint_resumes_with_the_fused_optimizer(precision, device):
    """A CPU run's optimizer state (unfused: its step counts are CPU tensors) loaded where the optimizer is
    fused: keep_implementation puts the counts on the GPU, where the fused kernel reads them."""
    from revvit.solver import keep_implementation

    cfg, cpu_model, cpu_opt, _, loss_fn = setup(torch.device("cpu"), "fp32")
    cpu_scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_step(cpu_model, cpu_opt, cpu_scaler, loss_fn, *batch(cfg, torch.device("cpu")), cfg, torch.device("cpu")).read()
    cfg, model, opt, scaler, loss_fn = setup(device, precision)
    model.load_state_dict(cpu_model.state_dict())
    opt.load_state_dict(cpu_opt.state_dict())
    keep_implementation(opt)
    assert all(g["fused"] for g in opt.param_groups)
    loss, *_ = train_step(model, opt, scaler, loss_fn, *batch(cfg, device), cfg, device).read()
    torch.cuda.synchronize(device)
    assert loss == loss
    assert opt.state and all(s["step"].device == p.device and s["step"].item() == 2.0 for p, s in opt.state.items())
