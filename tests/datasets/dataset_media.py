"""Media and configs the data tests make for themselves: PyAV mp4s whose pixels tell which frame or crop they are."""

import av
import numpy as np

from revvit.config import get_cfg
from revvit.datasets.video_writer import write_video

FPS = 30
NUM_VIDEO_FRAMES = 24
HEIGHT, WIDTH = 48, 64


def gray_ramp_video(path, frames=NUM_VIDEO_FRAMES, step=10, crf=18, fps=FPS, faststart=False, noise=0):
    """Frame t is gray at level ``step * t``, so a decoded frame tells its own index.

    ``noise`` adds that much uniform pixel noise, which makes every frame weigh about the same
    number of bytes (uniform frames compress to almost nothing).
    """
    video = np.zeros((frames, HEIGHT, WIDTH, 3), np.int64)
    for t in range(frames):
        video[t] = min(255, step * t)
    if noise:
        video += np.random.RandomState(0).randint(-noise, noise + 1, size=video.shape)
    video = np.clip(video, 0, 255).astype(np.uint8)
    if faststart:
        _write_faststart(path, video, fps)
    else:
        write_video(path, video, fps=fps, crf=crf)
    return path


def _write_faststart(path, video, fps):
    # The index (moov) goes first, so a file cut short still opens and announces all its frames.
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        stream.options = {"crf": "18", "g": "4"}
        for frame in video:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def gradient_video(path, frames=NUM_VIDEO_FRAMES):
    """Static frames whose brightness grows from left to right: tells which spatial crop was taken."""
    row = np.linspace(0, 250, WIDTH).astype(np.uint8)
    video = np.broadcast_to(row[None, None, :, None], (frames, HEIGHT, WIDTH, 3)).copy()
    write_video(path, video, fps=FPS)
    return path


def textured_static_video(path, frames=NUM_VIDEO_FRAMES, seed=0):
    """Identical textured frames, written losslessly: any frame-to-frame difference after augmentation is the augmentation's."""
    rng = np.random.RandomState(seed)
    frame = rng.randint(0, 256, (HEIGHT // 4, WIDTH // 4, 3)).astype(np.uint8).repeat(4, 0).repeat(4, 1)
    write_video(path, np.broadcast_to(frame, (frames, HEIGHT, WIDTH, 3)).copy(), fps=FPS, crf=0)
    return path


def truncate(path, fraction=0.5):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return path




def make_cfg(dataset, data_dir, **overrides):
    """A small config for ``dataset`` over ``data_dir``; ``overrides`` are SECTION__KEY=value (or KEY=value)."""
    cfg = get_cfg()
    cfg.TRAIN.DATASET = cfg.TEST.DATASET = dataset
    cfg.DATA.PATH_TO_DATA_DIR = str(data_dir)
    cfg.NUM_GPUS = 0
    cfg.DATA_LOADER.NUM_WORKERS = 0
    cfg.MODEL.NUM_CLASSES = 3
    cfg.DATA.MEAN, cfg.DATA.STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
    if dataset == "kinetics":
        cfg.DATA.NUM_FRAMES, cfg.DATA.SAMPLING_RATE, cfg.DATA.TARGET_FPS = 4, 2, FPS
        cfg.DATA.TRAIN_JITTER_SCALES = [40, 48]
        cfg.DATA.TRAIN_CROP_SIZE = cfg.DATA.TEST_CROP_SIZE = 32
        cfg.AUG.AA_TYPE = "rand-m9-n4-mstd0.5-inc1"
    else:
        cfg.DATA.TRAIN_CROP_SIZE = cfg.DATA.TEST_CROP_SIZE = 32
    for key, value in overrides.items():
        node = cfg
        *sections, name = key.split("__")
        for section in sections:
            node = node[section]
        node[name] = value
    return cfg
