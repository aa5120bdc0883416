"""DDP over NCCL and FSDP2 on one GPU (a one-process NCCL group) train exactly as the plain model does.

World size 1 reduces nothing, so any difference comes from the wrappers themselves: DDP's bucket views
and hooks, FSDP2's DTensor parameters, its all-gather before each unit (F and G recomputed one at a time
by RevBackProp) and its reduce-scatter after. The runs are in float64, where the only admissible
difference is the order of float64 sums in kernels: tests/engine/test_ddp.py derives 1e-10 for that
(Higham's (n - 1) u bound with a cancellation allowance of 1e5, times the steps and learning rate);
a real fault (a gradient lost, scaled or taken from other weights) moves the update by 1e-3 or more.
"""

import copy

import pytest
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from cudarun import batch, train_cfg
from revvit.engine import sharding
from revvit.engine.losses import build_loss
from revvit.engine.step import train_step
from revvit.models import build_model
from revvit.solver import build_optimizer

FLOAT64_BOUND = 1e-10
STEPS = 3


@pytest.fixture
def nccl_group(tmp_path, device):
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1, device_id=device)
    yield
    dist.destroy_process_group()


def run(model, cfg, device):
    """STEPS train steps of ``model`` (float64) on one batch; returns the losses and the final full weights."""
    inputs, labels = batch(cfg, device)
    inputs = [x.double() for x in inputs]
    opt, loss_fn = build_optimizer(model, cfg), build_loss(cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    losses = []
    for i in range(STEPS):
        torch.manual_seed(100 + i)  # the same drop-path masks in both runs
        losses.append(train_step(model, opt, scaler, loss_fn, inputs, labels, cfg, device).read()[0])
    full = {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for n, p in model.named_parameters()}
    return losses, full


def plain_and_twin(device):
    cfg = train_cfg("SOLVER.CLIP_GRAD_L2NORM", "1.0", "SOLVER.BASE_LR", "0.01")
    torch.manual_seed(0)
    model = build_model(cfg).to(device=device, dtype=torch.float64).train()
    return cfg, model, copy.deepcopy(model)


def assert_same_training(a, b, initial):
    (loss_a, w_a), (loss_b, w_b) = a, b
    moved = max((w_a[n] - initial[n]).abs().max().item() for n in w_a)
    diff = max((w_a[n] - w_b[n]).abs().max().item() for n in w_a)
    assert moved > 1e-3  # the steps really trained
    assert diff < FLOAT64_BOUND, diff
    assert loss_a == pytest.approx(loss_b, abs=FLOAT64_BOUND, rel=0)


def test_ddp_over_nccl_equals_the_plain_model(nccl_group, device):
    cfg, model, twin = plain_and_twin(device)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    ddp = DistributedDataParallel(twin, device_ids=[device.index], gradient_as_bucket_view=True)
    plain = run(model, cfg, device)
    losses, wrapped = run(ddp, cfg, device)
    wrapped = {n.removeprefix("module."): w for n, w in wrapped.items()}
    assert_same_training(plain, (losses, wrapped), initial)


def test_fsdp2_units_equal_the_plain_model(nccl_group, device):
    """sharding.shard_model leaves a one-process job unsharded; the units are sharded here directly, as
    shard_model does for a larger world, to run FSDP2's hooks around RevBackProp on the GPU."""
    cfg, model, twin = plain_and_twin(device)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    mesh = init_device_mesh("cuda", (1,))
    for unit in sharding.shard_units(twin):
        fully_shard(unit, mesh=mesh)
    fully_shard(twin, mesh=mesh)
    assert all(isinstance(p, DTensor) for p in twin.parameters())
    assert_same_training(run(model, cfg, device), run(twin, cfg, device), initial)
