"""Tiny data sets, a run_net runner and the DDP job shared by the engine tests (the tiny configs: helpers.py)."""

import os
import signal
import subprocess
import sys
import time

import av
import numpy as np
import torch
from PIL import Image
from timm.utils import unwrap_model

from helpers import COMMON, REV_VIT
from revvit.config import get_cfg, merge_opts
from revvit.engine.losses import build_loss
from revvit.engine.ddp import wrap_ddp
from revvit.engine.step import train_step
from revvit.models import build_model
from revvit.solver import build_optimizer
from revvit.utils import distributed as du

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_NET = os.path.join(REPO, "tools", "run_net.py")

_COLORS = np.array([[230, 40, 40], [40, 200, 40], [40, 60, 230], [220, 220, 40]], np.float32)


def make_images(root, classes=3, counts=None, size=16, seed=0):
    """ImageNet layout: {train,val,test}/<class>/<n>.jpg; each class has its own colour, plus noise."""
    counts = counts or {"train": 8, "val": 3, "test": 3}
    rng = np.random.RandomState(seed)
    for split, n in counts.items():
        for c in range(classes):
            folder = os.path.join(root, split, f"class{c}")
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                img = _COLORS[c] * rng.uniform(0.6, 1.0) + rng.normal(0, 25, (size, size, 3))
                Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(folder, f"{i}.jpg"), quality=95)
    return root


def write_mp4(path, frames, fps=30):
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_videos(root, classes=2, counts=None, frames=12, size=20, seed=0):
    """Kinetics layout: {train,val,test}.csv listing videos/<split>_<n>.mp4 <label>; class = colour."""
    counts = counts or {"train": 8, "val": 2, "test": 2}
    rng = np.random.RandomState(seed)
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    for split, n in counts.items():
        lines = []
        for i in range(n):
            label = i % classes
            clip = _COLORS[label] * rng.uniform(0.6, 1.0) + rng.normal(0, 20, (frames, size, size, 3))
            rel = f"videos/{split}_{i}.mp4"
            write_mp4(os.path.join(root, rel), np.clip(clip, 0, 255).astype(np.uint8))
            lines.append(f"{rel} {label}\n")
        with open(os.path.join(root, f"{split}.csv"), "w") as f:
            f.writelines(lines)
    return root


def run_net(args, cwd=None, timeout=300):
    """tools/run_net.py in a subprocess; returns the CompletedProcess (stdout+stderr merged)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, RUN_NET, *args], cwd=cwd or REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout,
    )


def start_run_net_until(args, out_dir, marker, stdout=subprocess.DEVNULL, timeout=300):
    """Start run_net.py (its own process group) and return it once ``marker`` is in its stdout.log.

    The marker is usually an iteration line of some epoch, so the caller can then interrupt or kill
    the run at a known point.
    """
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, RUN_NET, *args], cwd=REPO, env=env, stdout=stdout,
                            stderr=subprocess.STDOUT if stdout == subprocess.PIPE else subprocess.DEVNULL,
                            text=True, start_new_session=True)
    log = os.path.join(str(out_dir), "stdout.log")
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and proc.poll() is None:
            if os.path.exists(log) and marker in open(log).read():
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it reached the marker"
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    return proc


def json_stats(out_dir):
    """The JSON stats lines of a run, parsed."""
    import simplejson

    with open(os.path.join(out_dir, "json_stats.log")) as f:
        return [simplejson.loads(line[len("json_stats: "):]) for line in f if line.startswith("json_stats: ")]


# ---- DDP equivalence: the job function must live in an importable module for spawned processes.
GLOBAL_BATCH, STEPS = 8, 4


def ddp_cfg(num_gpus, out_dir):
    cfg = get_cfg()
    merge_opts(cfg, REV_VIT + COMMON + ["MODEL.NUM_CLASSES", "3", "MVIT.DROPPATH_RATE", "0.0", "NUM_GPUS", str(num_gpus),
                                        "SOLVER.BASE_LR", "0.01", "OUTPUT_DIR", str(out_dir)])
    cfg.freeze()
    return cfg


def ddp_steps(cfg):
    """STEPS AdamW steps on fixed global batches; each process takes its slice of every batch, in float64."""
    torch.manual_seed(0)
    model = build_model(cfg).double()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, cfg)
    model = wrap_ddp(model, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss_fn = build_loss(cfg)
    data = torch.Generator().manual_seed(1)
    world, rank = du.get_world_size(), du.get_rank()
    share = GLOBAL_BATCH // world
    losses = []
    for _ in range(STEPS):
        x = torch.randn(GLOBAL_BATCH, 3, 16, 16, generator=data, dtype=torch.float64)
        y = torch.randint(0, 3, (GLOBAL_BATCH,), generator=data)
        rows = slice(rank * share, (rank + 1) * share)
        loss, *_ = train_step(model, optimizer, scaler, loss_fn, [x[rows]], y[rows], cfg, torch.device("cpu")).read()
        losses.append(loss)
    if rank == 0:
        torch.save({"initial": initial, "final": unwrap_model(model).state_dict(), "losses": torch.tensor(losses)},
                   os.path.join(cfg.OUTPUT_DIR, f"world{world}.pt"))



def ddp_grad_storage(cfg):
    """Three DDP steps; rank 0 saves, per parameter, the address of its gradient after steps 2 and 3 and
    the address autograd accumulated into during step 3 (a post-accumulate-grad hook runs before DDP's
    reducer copies a fresh gradient into its bucket and points .grad at the bucket)."""
    torch.manual_seed(0)
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg)
    model = wrap_ddp(model, torch.device("cpu"))
    scaler, loss_fn = torch.amp.GradScaler("cpu", enabled=False), build_loss(cfg)
    params = list(model.parameters())
    after, accumulated = [], {}
    x = torch.randn(GLOBAL_BATCH // du.get_world_size(), 3, 16, 16, generator=torch.Generator().manual_seed(du.get_rank()))
    y = torch.arange(x.shape[0]) % 3
    for step in range(3):
        hooks = []
        if step == 2:
            def record(p, i):
                accumulated.setdefault(i, p.grad.data_ptr())

            hooks = [p.register_post_accumulate_grad_hook(lambda p, i=i: record(p, i)) for i, p in enumerate(params)]
        train_step(model, optimizer, scaler, loss_fn, [x], y, cfg, torch.device("cpu"))
        for h in hooks:
            h.remove()
        after.append([p.grad.data_ptr() for p in params])
    if du.get_rank() == 0:
        storages = len({p.grad.untyped_storage().data_ptr() for p in params})
        torch.save({"after": after[1:], "accumulated": [accumulated[i] for i in range(len(params))],
                    "storages": storages, "params": len(params)}, os.path.join(cfg.OUTPUT_DIR, "grad_storage.pt"))
