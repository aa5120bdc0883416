"""DETERMINISTIC on CUDA: two runs of the same training steps give the same weights bit for bit.

The SDPA backward (flash / memory-efficient kernels), the pooling backwards and cuBLAS's split
reductions may accumulate in a different order each run; under DETERMINISTIC (set_math_modes) torch
takes their deterministic variants. The steps run in a fresh interpreter: cuBLAS reads
CUBLAS_WORKSPACE_CONFIG when torch makes its first handle, which in this process an earlier test made.
"""

import os
import subprocess
import sys


HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Rev-MViT on clips (conv-pooled attention, max-pooled residuals at the transitions) and Rev-ViT, in
# bfloat16 (where the GPU has it) and float16 + GradScaler, each trained 3 steps twice from the same
# weights, batches and seeds; one line per case with the largest weight difference. One interpreter for
# all: it starts once (tools/gpu_check.sh gives the CUDA tests a time budget).
SCRIPT = r"""
import sys
import torch
sys.path[:0] = [{tests!r}, {repo!r}]
from helpers import TINY_MODELS, make_cfg
from revvit.engine.losses import build_loss
from revvit.engine.precision import set_math_modes
from revvit.engine.step import train_step
from revvit.models import build_model
from revvit.solver import build_optimizer

device = torch.device("cuda", 0)
dtypes = ["float16"] + (["bfloat16"] if torch.cuda.is_bf16_supported(including_emulation=False) else [])


def run(cfg, shape, dtype):
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    opt, loss_fn = build_optimizer(model, cfg), build_loss(cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == "float16")
    data = torch.Generator().manual_seed(1)
    for i in range(3):
        x = torch.randn(shape, generator=data).to(device)
        y = (torch.arange(shape[0]) % cfg.MODEL.NUM_CLASSES).to(device)
        torch.manual_seed(100 + i)
        train_step(model, opt, scaler, loss_fn, [x], y, cfg, device).read()
    return {{k: v.detach().clone() for k, v in model.state_dict().items()}}


for name in ("rev_vit", "rev_mvit_video"):
    path, opts, shape = TINY_MODELS[name]
    for dtype in dtypes:
        cfg = make_cfg(path, [*opts, "DETERMINISTIC", "True", "MVIT.DROPPATH_RATE", "0.1", "MODEL.LOSS_FUNC",
                              "cross_entropy", "TRAIN.MIXED_PRECISION", "True", "TRAIN.MIXED_PRECISION_DTYPE", dtype,
                              "MVIT.REV.RES_PATH", "max"])
        set_math_modes(cfg)
        a, b = run(cfg, shape, dtype), run(cfg, shape, dtype)
        print(name, dtype, "max weight difference", max((a[k].float() - b[k].float()).abs().max().item() for k in a))
"""


def test_deterministic_training_is_bit_exact():
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    script = SCRIPT.format(tests=os.path.dirname(HERE), repo=REPO)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) >= 2 and all(line.endswith("max weight difference 0.0") for line in lines), proc.stdout
