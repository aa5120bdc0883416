"""Tiny data sets, tiny model configs, a run_net runner and the DDP job shared by the engine tests."""

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

from revvit.config import get_cfg, merge_opts
from revvit.engine.losses import build_loss
from revvit.engine.ddp import wrap_ddp
from revvit.engine.step import train_step
from revvit.models import build_model
from revvit.solver import build_optimizer
from revvit.utils import distributed as du

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_NET = os.path.join(REPO, "tools", "run_net.py")

# Rev-ViT: 16x16 images, 4x4 patches (16 tokens), width 16, 3 reversible blocks.
REV_VIT = [
    "TRAIN.DATASET", "imagenet", "TEST.DATASET", "imagenet",
    "MVIT.PATCH_2D", "True", "MVIT.CLS_EMBED_ON", "False", "MVIT.REV.ENABLE", "True",
    "MVIT.PATCH_KERNEL", "[4,4]", "MVIT.PATCH_STRIDE", "[4,4]", "MVIT.PATCH_PADDING", "[0,0]",
    "MVIT.EMBED_DIM", "16", "MVIT.NUM_HEADS", "2", "MVIT.DEPTH", "3", "MVIT.DROPPATH_RATE", "0.1",
    "MVIT.ZERO_DECAY_POS_CLS", "True", "MODEL.DROPOUT_RATE", "0.0",
    "DATA.TRAIN_CROP_SIZE", "16", "DATA.TEST_CROP_SIZE", "16", "DATA.INPUT_CHANNEL_NUM", "[3]", "DATA.NUM_FRAMES", "1",
    "DATA.MEAN", "[0.5,0.5,0.5]", "DATA.STD", "[0.25,0.25,0.25]", "DATA.IN_VAL_CROP_RATIO", "1.0",
]

# Rev-MViT on clips: 4 frames of 16x16, one stage transition (block 1) between reversible blocks.
REV_MVIT_VIDEO = [
    "TRAIN.DATASET", "kinetics", "TEST.DATASET", "kinetics", "DATA.DECODING_BACKEND", "pyav",
    "MVIT.PATCH_2D", "False", "MVIT.CLS_EMBED_ON", "False", "MVIT.REV.ENABLE", "True", "MVIT.SEP_POS_EMBED", "True",
    "MVIT.PATCH_KERNEL", "[3,4,4]", "MVIT.PATCH_STRIDE", "[2,4,4]", "MVIT.PATCH_PADDING", "[1,0,0]",
    "MVIT.EMBED_DIM", "16", "MVIT.NUM_HEADS", "1", "MVIT.DEPTH", "3", "MVIT.DROPPATH_RATE", "0.1",
    "MVIT.DIM_MUL", "[[1,2.0]]", "MVIT.HEAD_MUL", "[[1,2.0]]", "MVIT.POOL_Q_STRIDE", "[[1,1,2,2]]",
    "MVIT.POOL_KVQ_KERNEL", "[3,3,3]", "MVIT.POOL_KV_STRIDE_ADAPTIVE", "[1,2,2]", "MVIT.REV.BUFFER_LAYERS", "[1]",
    "MODEL.DROPOUT_RATE", "0.0", "DATA.NUM_FRAMES", "4", "DATA.SAMPLING_RATE", "2", "DATA.INPUT_CHANNEL_NUM", "[3]",
    "DATA.TRAIN_CROP_SIZE", "16", "DATA.TEST_CROP_SIZE", "16", "DATA.TRAIN_JITTER_SCALES", "[16,20]",
    "TEST.NUM_ENSEMBLE_VIEWS", "2", "TEST.NUM_SPATIAL_CROPS", "1",
]

# Solver, logging and launch settings common to all tiny runs (no augmentation, no mixup, one process).
COMMON = [
    "SOLVER.OPTIMIZING_METHOD", "adamw", "SOLVER.BASE_LR", "0.005", "SOLVER.WARMUP_EPOCHS", "1.0",
    "SOLVER.WARMUP_START_LR", "0.0005", "SOLVER.COSINE_END_LR", "0.0001", "SOLVER.COSINE_AFTER_WARMUP", "True",
    "SOLVER.WEIGHT_DECAY", "0.05", "SOLVER.ZERO_WD_1D_PARAM", "True", "SOLVER.CLIP_GRAD_L2NORM", "1.0",
    "MODEL.LOSS_FUNC", "soft_cross_entropy", "AUG.ENABLE", "False", "MIXUP.ENABLE", "False",
    "DATA_LOADER.NUM_WORKERS", "0", "DATA_LOADER.PIN_MEMORY", "False", "NUM_GPUS", "0", "NUM_SHARDS", "1", "LOG_PERIOD", "1",
    "TRAIN.BATCH_SIZE", "8", "TEST.BATCH_SIZE", "8", "TRAIN.EVAL_PERIOD", "1", "TRAIN.CHECKPOINT_PERIOD", "1",
    "TRAIN.AUTO_RESUME", "True", "RNG_SEED", "3",
]

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
