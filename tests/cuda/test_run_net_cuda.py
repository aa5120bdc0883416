"""tools/run_net.py with NUM_GPUS 1 on the digits demo in bf16: trains an epoch, tests, checkpoints."""

import os
import subprocess
import sys

import simplejson
import torch

from helpers import REPO
from cudarun import precision_opts


def test_digits_demo_one_epoch_on_one_gpu(tmp_path):
    dtype = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(REPO, "tools", "run_net.py"), "--cfg", "configs/Demo/REV_VIT_DIGITS.yaml",
           "NUM_GPUS", "1", *precision_opts(dtype), "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_EPOCHS", "0.5", "TRAIN.EVAL_PERIOD", "1",
           "TRAIN.CHECKPOINT_PERIOD", "1", "OUTPUT_DIR", str(out), "DATA.DEMO_CACHE_DIR", str(tmp_path / "cache")]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert (out / "checkpoints" / "checkpoint_epoch_00001.pyth").is_file()
    with open(out / "json_stats.log") as f:
        stats = [simplejson.loads(line[len("json_stats: "):]) for line in f if line.startswith("json_stats: ")]
    (epoch,) = [s for s in stats if s.get("_type") == "train_epoch"]
    assert epoch["epoch"] == "1/1" and epoch["bad_samples"] == 0
    (final,) = [s for s in stats if s.get("split") == "test_final"]
    assert final["num_samples"] > 0 and 0.0 <= final["top1_acc"] <= 100.0
    state = torch.load(out / "checkpoints" / "checkpoint_epoch_00001.pyth", weights_only=True, map_location="cpu")
    assert all(torch.isfinite(v).all() for v in state["model_state"].values() if v.is_floating_point())
