"""FSDP2 (MODEL.FSDP): with 2 gloo processes a step equals a DDP step, each process holds half the
model state, and checkpoints are full state dicts that FSDP and plain (DDP) runs load alike."""

import math

import pytest
import torch

from helpers import ZERO_GRAD_SUFFIXES
from revvit.engine.launch import launch

from fsdp_job import fsdp_cfg, fsdp_vs_ddp
from helpers import COMMON, REV_VIT
from tinyrun import json_stats, make_images, run_net

pytestmark = pytest.mark.slow  # every test here spawns processes or trains

# The bound, derived. Both runs compute each process's float32 gradients with the same operations; DDP
# then all-reduces them and FSDP reduce-scatters them. With 2 processes each element is a 2-term sum
# (exact in any order) halved (exact in binary), so the runs agree bit for bit (measured: 0). A collective
# that associates differently (a padded flat buffer, another algorithm) may round once more per element
# and step: a relative gradient error of u = 6.0e-8 (float32), amplified by the element's cancellation k
# and turned by AdamW into an update change of about lr x u x k. Over 6 steps at lr 0.01 with k up to
# 2.5e6 that is 6 x 0.01 x 6.0e-8 x 2.5e6 = 9e-6 < TOL. A real fault (a shard not reduced, a block
# recomputed with gathered weights of another step) changes updates by ~lr = 1e-2.
TOL = 1e-5
ZERO_GRAD_BOUND = 2 * 0.01 * 6  # two runs, each at most ~lr per AdamW step, 6 steps


def _max_diff(a, b):
    """Largest difference, leaving out the k biases: their true gradient is exactly zero (a shift of every
    key cancels in the softmax), so they receive rounding noise, which AdamW normalises to steps of ~lr
    whatever its size; they are bounded by ZERO_GRAD_BOUND instead."""
    for k in a:
        if k.endswith(ZERO_GRAD_SUFFIXES):
            assert (a[k].float() - b[k].float()).abs().max() <= ZERO_GRAD_BOUND, k
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if not k.endswith(ZERO_GRAD_SUFFIXES))


def _optimizer_diff(a, b):
    assert a["param_groups"] == b["param_groups"]
    assert set(a["state"]) == set(b["state"])
    return max(
        (sa[key].float() - b["state"][i][key].float()).abs().max().item() for i, sa in a["state"].items() for key in sa
    )


@pytest.mark.parametrize("name,rev", [("rev_vit", True), ("rev_vit", False), ("rev_mvit", True), ("rev_mvit", False)])
def test_fsdp_step_equals_ddp_step_and_checkpoints_interchange(tmp_path, name, rev):
    launch(fsdp_cfg(name, rev, tmp_path), fsdp_vs_ddp)
    r = torch.load(tmp_path / "results.pt", weights_only=True)
    ddp, fsdp = r["ddp"]["ckpt"], r["fsdp"]["ckpt"]
    weights = _max_diff(fsdp["model_state"], ddp["model_state"])
    moments = _optimizer_diff(fsdp["optimizer_state"], ddp["optimizer_state"])
    cross = _max_diff(r["fsdp_from_ddp"]["ckpt"]["model_state"], r["ddp_from_fsdp"]["ckpt"]["model_state"])
    print(f"{name} rev={rev}: FSDP vs DDP max weight diff {weights:.3g}, optimizer state {moments:.3g}, "
          f"after crosswise resume {cross:.3g}; bytes DDP {r['ddp']['bytes']} FSDP {r['fsdp']['bytes']}")
    assert set(fsdp["model_state"]) == set(ddp["model_state"])  # the official layout, no FSDP prefixes
    assert weights < TOL and moments < TOL and cross < TOL
    # Per process: half of each part. FSDP2 splits every tensor on dim 0, rank 0 taking the larger
    # half of an odd count (ceil): that, exactly, is what rank 0 holds.
    state = ddp["model_state"]
    full = sum(v.numel() * v.element_size() for v in state.values())
    half = sum(math.ceil(v.shape[0] / 2) * (v.numel() // max(1, v.shape[0])) * v.element_size() for v in state.values())
    assert full / 2 <= half < 0.52 * full
    expected = {"params": (full, half), "grads": (full, half), "optimizer": (2 * full, 2 * half)}  # AdamW: 2 moments
    for part, (unsharded, sharded) in expected.items():
        assert r["ddp"]["bytes"][part] == unsharded, part
        assert r["fsdp"]["bytes"][part] == sharded, part


# An FSDP run stopped mid-epoch and auto-resumed ends with exactly the weights of the uninterrupted run:
# tests/engine/test_preemption.py (2-fsdp-usr1).


def test_validation_when_one_rank_s_last_batch_is_only_padding(tmp_path):
    """DistributedSampler pads 9 val images to 10 for 2 ranks, so rank 1's last batch (one image per rank)
    holds only a repeat, which validation drops. Under FSDP that rank must still run the forward: the
    other rank waits in its all-gathers."""
    data = make_images(str(tmp_path / "images"))  # 3 classes x 3 val images
    out = tmp_path / "run"
    args = ["--cfg", "configs/ImageNet/REV_VIT_S.yaml", *REV_VIT, *COMMON, "MODEL.NUM_CLASSES", "3",
            "DATA.PATH_TO_DATA_DIR", data, "OUTPUT_DIR", str(out), "NUM_GPUS", "2", "MODEL.FSDP", "True",
            "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_EPOCHS", "0.5", "TRAIN.BATCH_SIZE", "2", "TEST.ENABLE", "False",
            "DIST_TIMEOUT", "60"]
    proc = run_net(args, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:]
    (val,) = [s for s in json_stats(str(out)) if s["_type"] == "val_epoch"]
    assert 0.0 <= val["top1_err"] <= 100.0
