"""One optimisation step: losses, the guard that skips a bad step on the device, clipping, bf16 autocast on CPU."""

import copy
import re
import sys

import pytest
import torch
import torch.nn.functional as F

from revvit.config import get_cfg, merge_opts
from revvit.engine.losses import build_loss
from revvit.utils.seeding import epoch_seed
from revvit.engine.step import LossExplosionError, LossGuard, NonFiniteLossError, train_step
from revvit.models import build_model
from revvit.solver import build_optimizer
from revvit.utils import meters

from helpers import COMMON, REV_VIT

CPU = torch.device("cpu")


def _setup(*opts):
    cfg = get_cfg()
    merge_opts(cfg, REV_VIT + COMMON + ["MODEL.NUM_CLASSES", "3", *opts])
    torch.manual_seed(0)
    model = build_model(cfg)
    return cfg, model, build_optimizer(model, cfg), torch.amp.GradScaler("cpu", enabled=False), build_loss(cfg)


def _batch(n=4):
    g = torch.Generator().manual_seed(5)
    return [torch.randn(n, 3, 16, 16, generator=g)], torch.tensor([0, 1, 2, 1])


def test_losses_on_hard_and_soft_targets():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    hard = torch.tensor([0, 2])
    cfg = get_cfg()
    cfg.MODEL.LOSS_FUNC = "soft_cross_entropy"
    # Without mixup, soft cross entropy on hard labels is plain cross entropy (no smoothing), as in PySlowFast.
    assert build_loss(cfg)(logits, hard).item() == pytest.approx(F.cross_entropy(logits, hard).item())
    soft = torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.2, 0.6]])
    expected = -(soft * logits.log_softmax(1)).sum(1).mean().item()
    assert build_loss(cfg)(logits, soft).item() == pytest.approx(expected)
    cfg.MODEL.LOSS_FUNC = "cross_entropy"
    assert build_loss(cfg)(logits, soft).item() == pytest.approx(expected)
    cfg.MODEL.LOSS_FUNC = "bce"
    onehot = F.one_hot(hard, 3).float()
    assert build_loss(cfg)(logits, hard).item() == pytest.approx(F.binary_cross_entropy_with_logits(logits, onehot).item())


def test_non_finite_loss_stops_before_the_weights_change():
    cfg, model, opt, scaler, loss_fn = _setup()
    inputs, labels = _batch()
    inputs[0][0, 0, 0, 0] = float("nan")
    before = [p.clone() for p in model.parameters()]
    step = train_step(model, opt, scaler, loss_fn, inputs, labels, cfg, CPU)
    with pytest.raises(NonFiniteLossError, match="loss is nan at epoch 1, iteration 1"):
        step.read()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _state(model, opt):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()["state"])


def _assert_same_state(a, b):
    (weights_a, moments_a), (weights_b, moments_b) = a, b
    assert weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert moments_a.keys() == moments_b.keys()
    for i in moments_a:
        assert moments_a[i].keys() == moments_b[i].keys()
        assert all(torch.equal(torch.as_tensor(moments_a[i][k]), torch.as_tensor(moments_b[i][k])) for k in moments_a[i])


BAD_STEP = 3  # 1-based: steps 1 and 2 fill the optimizer state, step 3 goes wrong, step 4 is already queued


# (optimizer, fused, GradScaler's dtype or None): every way train_step can skip an update.
IMPLEMENTATIONS = [
    pytest.param("adamw", False, None, id="adamw-foreach"),
    pytest.param("sgd", False, None, id="sgd-foreach"),
    pytest.param("adamw", True, None, id="adamw-fused"),
    pytest.param("sgd", True, None, id="sgd-fused"),
    pytest.param("adamw", True, "float16", id="adamw-fused-gradscaler"),
    pytest.param("adamw", False, "float16", id="adamw-foreach-gradscaler"),
]


def _guarded_run(monkeypatch, method, fused, scaled, spoil, guard):
    """Steps as the training loop takes them (step k read once step k+1 is queued), ``spoil(k, inputs,
    loss_scale)`` making step BAD_STEP bad; returns the state after step BAD_STEP - 1, the state at the
    end and the error the read raised."""
    from revvit.solver import optimizer as optim

    monkeypatch.setattr(optim, "fused_available", lambda groups: fused)
    opts = ["SOLVER.OPTIMIZING_METHOD", method, "MVIT.DROPPATH_RATE", "0.0"]
    if scaled:
        opts += ["TRAIN.MIXED_PRECISION", "True", "TRAIN.MIXED_PRECISION_DTYPE", scaled]
    cfg, model, _, _, base_loss = _setup(*opts)
    opt = build_optimizer(model, cfg)
    assert bool(opt.defaults.get("fused")) == fused
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, enabled=scaled is not None)
    scale = [1.0]
    loss_fn = lambda preds, labels: base_loss(preds, labels) * scale[0]  # noqa: E731
    pending, before_bad = None, None
    with pytest.raises((NonFiniteLossError, LossExplosionError)) as raised:
        for k in range(1, BAD_STEP + 2):
            inputs, labels = _batch()
            scale[0] = 1.0
            spoil(k, inputs, scale)
            step = train_step(model, opt, scaler, loss_fn, inputs, labels, cfg, CPU, guard, (0, k - 1))
            if k == BAD_STEP - 1:
                before_bad = _state(model, opt)
            if pending is not None:
                pending.read()
            pending = step
    return before_bad, _state(model, opt), raised.value


def _nan_at_bad_step(k, inputs, scale):
    if k == BAD_STEP:
        inputs[0][0, 0, 0, 0] = float("nan")


@pytest.mark.parametrize("method, fused, scaled", IMPLEMENTATIONS)
def test_a_nan_loss_leaves_the_weights_and_optimizer_state_of_the_step_before(monkeypatch, method, fused, scaled):
    """The guard decides on the device and the loop reads a step one step late: step BAD_STEP's NaN loss
    skips its own update and the next one (queued before the read), and the read names BAD_STEP. The
    weights and every optimizer state tensor (moments, step counts) are bit for bit those after the step
    before: a fused kernel told found_inf changes nothing and takes its step counts back."""
    before_bad, after, error = _guarded_run(monkeypatch, method, fused, scaled, _nan_at_bad_step, LossGuard(0.0))
    assert isinstance(error, NonFiniteLossError)
    assert f"loss is nan at epoch 1, iteration {BAD_STEP}." in str(error)
    _assert_same_state(before_bad, after)


def test_gradient_clipping_reports_the_norm_before_clipping():
    cfg, model, opt, scaler, loss_fn = _setup("SOLVER.CLIP_GRAD_L2NORM", "0.01")
    loss, top1, top5, norm = train_step(model, opt, scaler, loss_fn, *_batch(), cfg, CPU).read()
    clipped = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]).item()
    assert norm > 0.01 and clipped == pytest.approx(0.01, rel=1e-3)
    assert 0.0 <= top1 <= 100.0 and top5 == 0.0  # 3 classes: the label is always in the top 5


def test_bf16_autocast_step_on_cpu():
    cfg, model, opt, scaler, loss_fn = _setup("TRAIN.MIXED_PRECISION", "True")
    seen = []
    hook = model.head.projection.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = [p.clone() for p in model.parameters()]
    loss, *_ = train_step(model, opt, scaler, loss_fn, *_batch(), cfg, CPU).read()
    hook.remove()
    assert seen == [torch.bfloat16]
    assert loss == loss and all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_epoch_seeds_depend_on_seed_epoch_and_rank_only():
    cfg = get_cfg()
    assert epoch_seed(cfg, 3, 0) == epoch_seed(cfg, 3, 0)
    assert len({epoch_seed(cfg, e, r) for e in range(3) for r in range(2)}) == 6


def test_progress_bar_only_on_a_terminal(monkeypatch):
    items = [1, 2, 3]
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert meters.progress(items, "x") is items
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    bar = meters.progress(items, "x")
    assert list(bar) == items and bar is not items


def test_loss_guard_has_its_own_window_and_fires_from_the_second_loss():
    guard = LossGuard(10.0, window=3)
    norm = torch.ones((), dtype=torch.float64)

    def observe(loss):
        bad, mean, count = guard.observe(torch.tensor(loss, dtype=torch.float64), norm, scaled=False)
        return bool(bad), mean.item(), count

    assert observe(2.3)[0] is False  # nothing to compare with yet
    assert observe(20.0)[0] is False  # 20 < 10 x 2.3
    for loss in (1.0, 1.0, 1.0):  # the window keeps the last 3: mean 1.0
        observe(loss)
    assert not guard.halted
    assert observe(10.5) == (True, 1.0, 3)
    assert guard.halted  # it stays on: every later step is skipped until the host reads this one
    assert observe(1.0)[0] is False and guard.halted
    off = LossGuard(0.0)
    off.observe(torch.tensor(1.0, dtype=torch.float64), norm, scaled=False)
    assert not off.observe(torch.tensor(1e30, dtype=torch.float64), norm, scaled=False)[0]  # factor 0: off


def test_a_non_finite_gradient_norm_is_bad_only_without_a_gradscaler():
    """With a GradScaler an overflow is the scaler's to skip and recover from; without one nothing would."""
    loss, inf = torch.tensor(1.0, dtype=torch.float64), torch.tensor(float("inf"), dtype=torch.float64)
    assert LossGuard(0.0).observe(loss, inf, scaled=False)[0]
    assert not LossGuard(0.0).observe(loss, inf, scaled=True)[0]


def _explode_at_bad_step(k, inputs, scale):
    if k == BAD_STEP:
        scale[0] = 100.0  # a finite loss far above the mean of the steps before


@pytest.mark.parametrize("method, fused, scaled", IMPLEMENTATIONS[:3])
def test_exploded_loss_stops_before_the_weights_change(monkeypatch, method, fused, scaled):
    """The window mean is on the device, so the step whose loss exploded is skipped like a NaN one."""
    before_bad, after, error = _guarded_run(monkeypatch, method, fused, scaled, _explode_at_bad_step, LossGuard(1.5))
    assert isinstance(error, LossExplosionError)
    assert re.search(rf"exploded at epoch 1, iteration {BAD_STEP}: \d+(\.\d+)? is more than TRAIN.KILL_LOSS_EXPLOSION_FACTOR "
                     rf"1.5 x 1.\d+, the mean of the previous {BAD_STEP - 1} iterations", str(error)), str(error)
    _assert_same_state(before_bad, after)


def test_mixup_targets_train_and_score_against_the_dominant_class():
    cfg, model, opt, scaler, loss_fn = _setup("MVIT.DROPPATH_RATE", "0.0")
    inputs, labels = _batch()
    soft = F.one_hot(labels, 3).float() * 0.7 + 0.1  # what timm Mixup with label smoothing produces
    with torch.no_grad():
        expected_err = 100.0 * (model(inputs).argmax(1) != labels).float().mean().item()
    loss, top1, top5, norm = train_step(model, opt, scaler, loss_fn, inputs, soft, cfg, CPU).read()
    assert top1 == pytest.approx(expected_err)
    assert loss > 0 and norm > 0


class _HostReads:
    """Counts the Python-level ways a tensor's value reaches the host (each one a sync on CUDA)."""

    NAMES = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy")

    def __init__(self, monkeypatch):
        self.calls = []
        for name in self.NAMES:
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))

    def _counted(self, name, fn):
        def call(tensor, *args, **kwargs):
            self.calls.append(name)
            return fn(tensor, *args, **kwargs)

        return call


@pytest.mark.parametrize("dtype,method", [("float16", "adamw"), ("bfloat16", "sgd")])
def test_no_host_read_in_a_step_with_fused_optimizers(monkeypatch, dtype, method):
    """The CPU stand-in for CUDA's budget of no sync in a step: with the optimizers train() uses on CUDA
    (fused, told found-inf on the device), a step reads nothing to the host, and reading the step before
    reads one tensor (on CUDA, pinned memory behind an event). Drop path is on (its mask and RNG replay),
    clipping is on (COMMON), the loss guard is on."""
    from revvit.solver import optimizer as optim

    monkeypatch.setattr(optim, "fused_available", lambda groups: True)
    cfg, model, _, _, loss_fn = _setup("TRAIN.MIXED_PRECISION", "True", "TRAIN.MIXED_PRECISION_DTYPE", dtype,
                                       "SOLVER.OPTIMIZING_METHOD", method)
    opt = build_optimizer(model, cfg)
    assert opt.defaults["fused"] is True
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == "float16")
    guard = LossGuard(10.0)
    reads = _HostReads(monkeypatch)
    pending = None
    for step in range(3):
        reads.calls.clear()
        taken = train_step(model, opt, scaler, loss_fn, *_batch(), cfg, CPU, guard, (0, step))
        assert reads.calls == [], reads.calls
        if pending is not None:
            loss, *_ = pending.read()
            assert reads.calls == ["tolist"], reads.calls
            assert loss == guard.recent[(step - 1) % guard.window].item()
        pending = taken
    assert guard.seen == 3 and not guard.halted


def test_optimizers_are_fused_only_on_cuda():
    from revvit.solver.optimizer import fused_available

    assert not fused_available([{"params": [torch.zeros(2)]}])
    assert not _setup()[2].defaults.get("fused")  # CPU: the reference for-each path


def test_a_checkpoint_from_another_device_keeps_this_devices_fused_step(monkeypatch):
    """load_state_dict copies the saved groups' ``fused`` flag: a CPU checkpoint resumed where the optimizer
    is fused would step unfused, and under a GradScaler fail. keep_implementation restores it."""
    from revvit.solver import keep_implementation
    from revvit.solver import optimizer as optim

    cfg, model, cpu_opt, _, loss_fn = _setup("TRAIN.MIXED_PRECISION", "True", "TRAIN.MIXED_PRECISION_DTYPE", "float16")
    monkeypatch.setattr(optim, "fused_available", lambda groups: True)
    opt = build_optimizer(model, cfg)
    opt.load_state_dict(cpu_opt.state_dict())
    assert not opt.param_groups[0]["fused"]
    keep_implementation(opt)
    assert all(g["fused"] for g in opt.param_groups)
    loss, *_ = train_step(model, opt, torch.amp.GradScaler("cpu"), loss_fn, *_batch(), cfg, CPU).read()
    assert loss == loss


def test_a_resumed_fused_optimizer_gets_float32_step_counts_on_the_parameters_device(monkeypatch):
    """load_state_dict places each ``step`` by the checkpoint's flags: an unfused checkpoint's counts stay
    where and as they were saved (CPU; float64 here, an older torch's Python number elsewhere), while a
    fused kernel reads them through a device pointer: on CUDA, a CPU count is an illegal memory access."""
    from revvit.solver import keep_implementation
    from revvit.solver import optimizer as optim

    cfg, model, cpu_opt, scaler, loss_fn = _setup()
    train_step(model, cpu_opt, scaler, loss_fn, *_batch(), cfg, CPU).read()
    saved = cpu_opt.state_dict()
    for state in saved["state"].values():
        state["step"] = state["step"].double()
    monkeypatch.setattr(optim, "fused_available", lambda groups: True)
    opt = build_optimizer(model, cfg)
    opt.load_state_dict(saved)
    assert any(s["step"].dtype == torch.float64 for s in opt.state.values())  # as loaded
    keep_implementation(opt)
    steps = [(s["step"], p) for g in opt.param_groups for p in g["params"] for s in [opt.state[p]]]
    assert steps and all(t.dtype == torch.float32 and t.device == p.device and t.item() == 1.0 for t, p in steps)
    train_step(model, opt, scaler, loss_fn, *_batch(), cfg, CPU).read()
    assert all(opt.state[p]["step"].item() == 2.0 for _, p in steps)


@pytest.mark.parametrize("signum", [0, 15])
def test_the_stop_vote_rides_in_the_step_s_stats(signum, tmp_path, monkeypatch):
    """Reading a step's stats records the agreed stop, so the step boundary's should_stop() needs no collective."""
    from revvit.engine import preemption

    cfg, model, opt, scaler, loss_fn = _setup()
    stop = preemption.StopRequest(str(tmp_path), 20)
    stop.signum = signum
    agreed = []
    monkeypatch.setattr(stop, "agree", lambda reduced: (agreed.append(reduced), preemption.StopRequest.agree(stop, reduced)))
    step = train_step(model, opt, scaler, loss_fn, *_batch(), cfg, CPU, stop=stop)
    assert agreed == []  # the vote is on its way: agreed when the stats are read
    step.read()
    assert agreed == [float(signum)]  # the mean over one process: this rank's vote
    assert stop.should_stop() == signum
