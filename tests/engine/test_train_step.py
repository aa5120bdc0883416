"""One optimisation step: losses, NaN stop, clipping, bf16 autocast on CPU."""

import sys

import pytest
import torch
import torch.nn.functional as F

from revvit.config import get_cfg, merge_opts
from revvit.engine.losses import build_loss
from revvit.engine.runtime import epoch_seed
from revvit.engine.train import LossExplosionError, LossGuard, NonFiniteLossError, train_step
from revvit.models import build_model
from revvit.solver import build_optimizer
from revvit.utils import meters

from tinyrun import COMMON, REV_VIT

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
    with pytest.raises(NonFiniteLossError, match="loss is nan"):
        train_step(model, opt, scaler, loss_fn, inputs, labels, cfg, CPU)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_gradient_clipping_reports_the_norm_before_clipping():
    cfg, model, opt, scaler, loss_fn = _setup("SOLVER.CLIP_GRAD_L2NORM", "0.01")
    loss, top1, top5, norm = train_step(model, opt, scaler, loss_fn, *_batch(), cfg, CPU)
    clipped = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None]).item()
    assert norm > 0.01 and clipped == pytest.approx(0.01, rel=1e-3)
    assert 0.0 <= top1 <= 100.0 and top5 == 0.0  # 3 classes: the label is always in the top 5


def test_bf16_autocast_step_on_cpu():
    cfg, model, opt, scaler, loss_fn = _setup("TRAIN.MIXED_PRECISION", "True")
    seen = []
    hook = model.head.projection.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    before = [p.clone() for p in model.parameters()]
    loss, *_ = train_step(model, opt, scaler, loss_fn, *_batch(), cfg, CPU)
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
    guard.check(2.3, 0, 0)  # nothing to compare with yet
    guard.check(20.0, 0, 1)  # 20 < 10 x 2.3
    for loss in (1.0, 1.0, 1.0):  # the window keeps the last 3: mean 1.0
        guard.check(loss, 1, 0)
    with pytest.raises(LossExplosionError, match=r"epoch 2, iteration 6: 10.5 .*FACTOR 10 x 1, the mean of the previous 3"):
        guard.check(10.5, 1, 5)
    LossGuard(0.0).check(1e30, 0, 9)  # factor 0: off


def test_exploded_loss_stops_before_the_weights_change():
    cfg, model, opt, scaler, loss_fn = _setup()
    inputs, labels = _batch()
    guard = LossGuard(1.5)
    guard.check(0.1, 0, 0)  # a recent mean far below this batch's loss of about 1.1
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(LossExplosionError, match="epoch 3, iteration 8"):
        train_step(model, opt, scaler, loss_fn, inputs, labels, cfg, CPU, guard, (2, 7))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_mixup_targets_train_and_score_against_the_dominant_class():
    cfg, model, opt, scaler, loss_fn = _setup("MVIT.DROPPATH_RATE", "0.0")
    inputs, labels = _batch()
    soft = F.one_hot(labels, 3).float() * 0.7 + 0.1  # what timm Mixup with label smoothing produces
    with torch.no_grad():
        expected_err = 100.0 * (model(inputs).argmax(1) != labels).float().mean().item()
    loss, top1, top5, norm = train_step(model, opt, scaler, loss_fn, inputs, soft, cfg, CPU)
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
def test_one_host_read_per_step_with_fused_optimizers(monkeypatch, dtype, method):
    """The CPU stand-in for CUDA's one-sync budget: with the optimizers train() uses on CUDA (fused, and
    fed the GradScaler's found-inf flag on the device), a step reads one tensor to the host. Drop path is
    on (its mask and RNG replay), clipping is on (COMMON)."""
    from revvit.solver import optimizer as optim

    monkeypatch.setattr(optim, "fused_available", lambda groups: True)
    cfg, model, _, _, loss_fn = _setup("TRAIN.MIXED_PRECISION", "True", "TRAIN.MIXED_PRECISION_DTYPE", dtype,
                                       "SOLVER.OPTIMIZING_METHOD", method)
    opt = build_optimizer(model, cfg)
    assert opt.defaults["fused"] is True
    scaler = torch.amp.GradScaler("cpu", enabled=dtype == "float16")
    guard = LossGuard(10.0)
    reads = _HostReads(monkeypatch)
    for step in range(3):
        reads.calls.clear()
        loss, *_ = train_step(model, opt, scaler, loss_fn, *_batch(), cfg, CPU, guard, (0, step))
        assert reads.calls == ["tolist"], reads.calls
    assert len(guard.recent) == 3 and loss == guard.recent[-1]


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
    loss, *_ = train_step(model, opt, torch.amp.GradScaler("cpu"), loss_fn, *_batch(), cfg, CPU)
    assert loss == loss


def test_a_resumed_fused_optimizer_gets_float32_step_counts_on_the_parameters_device(monkeypatch):
    """load_state_dict places each ``step`` by the checkpoint's flags: an unfused checkpoint's counts stay
    where and as they were saved (CPU; float64 here, an older torch's Python number elsewhere), while a
    fused kernel reads them through a device pointer: on CUDA, a CPU count is an illegal memory access."""
    from revvit.solver import keep_implementation
    from revvit.solver import optimizer as optim

    cfg, model, cpu_opt, scaler, loss_fn = _setup()
    train_step(model, cpu_opt, scaler, loss_fn, *_batch(), cfg, CPU)
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
    train_step(model, opt, scaler, loss_fn, *_batch(), cfg, CPU)
    assert all(opt.state[p]["step"].item() == 2.0 for _, p in steps)


@pytest.mark.parametrize("signum", [0, 15])
def test_the_stop_vote_rides_in_the_step_s_stats(signum, tmp_path, monkeypatch):
    """train_step records the agreed stop, so the step boundary's should_stop() needs no collective."""
    from revvit.engine import preemption

    cfg, model, opt, scaler, loss_fn = _setup()
    stop = preemption.StopRequest(str(tmp_path), 20)
    stop.signum = signum
    agreed = []
    monkeypatch.setattr(stop, "agree", lambda reduced: (agreed.append(reduced), preemption.StopRequest.agree(stop, reduced)))
    train_step(model, opt, scaler, loss_fn, *_batch(), cfg, CPU, stop=stop)
    assert agreed == [float(signum)]  # the mean over one process: this rank's vote
    assert stop.should_stop() == signum
