"""AUG.ON_DEVICE on a GPU: the device half gives the CPU's results, on a side stream, reproducibly.

Marked ``cuda``: skipped without CUDA (tests/conftest.py shows the devices to marked tests only). Every
test runs under the trainer's math modes (TF32 on, cudnn.benchmark on), as the device half does in training.
"""

import io
import random
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dataset_media import make_cfg
from exact_reference import GEOMETRIC_DRAWS, smooth_reference, source_points_reference
from revvit.config import get_cfg
from revvit.datasets import device_batches
from revvit.datasets.device.gpu_decode import decode_crops
from revvit.datasets.device.rand_augment import BatchRandAugment, _geometric, _sharpness, source_points
from revvit.engine.precision import set_math_modes

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def trainer_math_modes():
    """The flags ``set_math_modes`` gives a training run (DETERMINISTIC False), restored afterwards."""
    flags = (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"), \
            (torch.backends.cudnn, "benchmark"), (torch.backends.cudnn, "deterministic")
    saved = [getattr(owner, name) for owner, name in flags]
    cfg = get_cfg()
    assert not cfg.DETERMINISTIC
    set_math_modes(cfg)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    yield
    for (owner, name), value in zip(flags, saved):
        setattr(owner, name, value)


def _cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return torch.device("cuda", 0)


def _smooth(n, size=64):
    yy, xx = np.mgrid[0:size, 0:size]
    imgs = [np.stack([128 + 100 * np.sin(xx / (9 + k) + yy / 29), 128 + 90 * np.cos(yy / (7 + k)), 128 + 60 * np.sin((xx + yy) / 17)], 0)
            for k in range(n)]
    return torch.from_numpy(np.stack(imgs).clip(0, 255).astype(np.uint8))


def test_rand_augment_on_cuda_is_the_cpus():
    cuda = _cuda()
    ra = BatchRandAugment("rand-m9-n4-mstd0.5-inc1", 64)
    x = _smooth(16)
    random.seed(0), np.random.seed(0)
    plans = ra.plan(16)
    cpu, gpu = ra.apply(x, plans), ra.apply(x.to(cuda), plans).cpu()
    # Same draws, same integer pixel arithmetic; grid_sample and float blends may round a .5 the other way.
    assert (cpu.int() - gpu.int()).abs().max() <= 1


def test_affine_coordinates_on_cuda_are_float32_under_tf32():
    """A float32 matmul would run in TF32 here, moving coordinates by up to 0.1 px; the bound is float32's
    (derivation in exact_reference.source_points_reference)."""
    cuda = _cuda()
    matrices = [_geometric(name, value, 224, 224) for name, value in GEOMETRIC_DRAWS]
    src = source_points(matrices, 224, 224, cuda).cpu().double().numpy()
    exact, bound = source_points_reference(matrices, 224, 224)
    assert (np.abs(src - exact) <= bound).all(), np.abs(src - exact).max()


def test_sharpness_on_cuda_is_the_integer_filter_under_tf32():
    cuda = _cuda()
    x = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = _sharpness(x.to(cuda), [0.0] * 4).cpu()
    assert np.array_equal(out.numpy(), smooth_reference(x.numpy()))


def test_device_batches_on_a_side_stream_are_the_cpus_and_reproducible(tmp_path):
    cuda = _cuda()
    # Loader workers (none are started here: the batches are given) turn on the side stream.
    cfg = make_cfg("imagenet", tmp_path, AUG__ON_DEVICE=True, AUG__ENABLE=True, AUG__RE_PROB=0.0, MIXUP__ENABLE=True,
                   DATA__TRAIN_CROP_SIZE=64, DATA_LOADER__NUM_WORKERS=2)
    batches = [([_smooth(8).pin_memory()], torch.arange(8) % 3, torch.arange(8), {}) for _ in range(3)]
    on_gpu = [(b[0][0].cpu(), b[1].cpu()) for b in device_batches(batches, cfg, cuda, 0)]
    again = [(b[0][0].cpu(), b[1].cpu()) for b in device_batches(batches, cfg, cuda, 0)]
    on_cpu = [(b[0][0], b[1]) for b in device_batches(batches, cfg, torch.device("cpu"), 0)]
    for (x, y), (x2, y2), (xc, yc) in zip(on_gpu, again, on_cpu):
        assert torch.equal(x, x2) and torch.equal(y, y2)
        # One grey level of RandAugment rounding, in normalised units (std 0.25 x 255), mixed at most once.
        assert torch.allclose(x, xc, atol=1 / (0.25 * 255) + 1e-5) and torch.allclose(y, yc)


def test_gpu_jpeg_decoding_matches_the_cpu_decoder():
    cuda = _cuda()
    data = []
    for img in _smooth(4).permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        data.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    boxes = torch.tensor([[0, 0, 64, 64, 0], [8, 4, 40, 50, 1], [0, 10, 54, 30, 0], [20, 20, 44, 44, 1]])
    gpu = decode_crops(data, boxes, 32, "bicubic", cuda).cpu().int()
    cpu = decode_crops(data, boxes, 32, "bicubic", torch.device("cpu")).int()
    # nvJPEG and libjpeg-turbo both meet the IDCT accuracy of IEEE 1180 but upsample chroma their own
    # ways: a grey level or two on average, more at a few pixels.
    assert (gpu - cpu).abs().float().mean() <= 2.0


def test_gpu_decoding_waits_for_the_work_queued_on_its_stream():
    """nvJPEG writes the decoded images, on a stream of its own, into memory the current stream's pool hands
    out: memory that a kernel queued earlier on the current stream may still write. Here such a kernel,
    held back by a sleep, writes 7 over every byte a decoded image can land in; decoding must wait for it."""
    cuda = _cuda()
    yy, xx = np.mgrid[0:640, 0:640]
    img = np.stack([128 + 100 * np.sin(xx / 37), 128 + 90 * np.cos(yy / 23), 128 + 60 * np.sin((xx + yy) / 51)], -1)
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    data = [torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)]
    boxes = torch.tensor([[0, 0, 640, 640, 0]])
    cpu = decode_crops(data, boxes, 64, "bicubic", torch.device("cpu")).int()
    decode_crops(data, boxes, 64, "bicubic", cuda)  # nvJPEG's decoder is made on first use: not timed below
    side = torch.cuda.Stream(cuda)
    torch.cuda.synchronize(cuda)
    torch.cuda.empty_cache()
    with torch.cuda.stream(side):
        torch.cuda._sleep(10**9)  # about half a second of GPU clock, far longer than decoding one image
        stale = torch.empty(32 * 2**20, dtype=torch.uint8, device=cuda)  # a segment of the side stream's pool
        stale.fill_(7)  # queued behind the sleep
        del stale  # free for the side stream at once; the decoded image (1.2 MB) is cut from it
        gpu = decode_crops(data, boxes, 64, "bicubic", cuda)
    torch.cuda.synchronize(cuda)
    # nvJPEG against libjpeg-turbo: a grey level or two on average (test_gpu_jpeg_decoding_matches_the_cpu_decoder);
    # an image overwritten with 7 is ~120 levels away.
    assert (gpu.cpu().int() - cpu).abs().float().mean() <= 2.0


def test_the_device_half_never_waits_for_the_gpu(tmp_path):
    """The device half runs on the prefetch stream while the previous step trains: a host sync there (a
    copy from pageable memory, ``torch.tensor(..., device="cuda")``, ``.item()``) would hold the host until
    the augmentation is done. Every op of the recipe, RandAugment's geometric ones included, is run; the
    first call warms the allocators up."""
    from revvit.datasets.device.device_augment import DeviceAugment

    cuda = _cuda()
    cfg = make_cfg("imagenet", tmp_path, AUG__ON_DEVICE=True, AUG__ENABLE=True, AUG__AA_TYPE="rand-m9-n6-mstd0.5-inc1",
                   AUG__RE_PROB=0.25, MIXUP__ENABLE=True, DATA__TRAIN_CROP_SIZE=64)
    augment = DeviceAugment(cfg, cuda)
    x, labels = _smooth(16).pin_memory().to(cuda, non_blocking=True), (torch.arange(16) % 3).to(cuda)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    augment(x, labels)
    torch.cuda.synchronize(cuda)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out, targets = augment(x, labels)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "synchroniz" in str(w.message)]
    assert not syncs, "\n".join(syncs)
    assert out.shape == (16, 3, 64, 64) and targets.shape == (16, cfg.MODEL.NUM_CLASSES)


def test_the_device_half_built_on_one_stream_runs_on_another(tmp_path):
    """Built on the training stream, run on the prefetch stream, which waits for nothing the training stream
    does: building it must leave no work on the training stream (a host sync is the sign of a copy there),
    and what it keeps must reach the device on the stream that augments."""
    from revvit.datasets.device.device_augment import DeviceAugment

    cuda = _cuda()
    cfg = make_cfg("imagenet", tmp_path, AUG__ON_DEVICE=True, DATA__TRAIN_CROP_SIZE=64)
    torch.cuda.synchronize(cuda)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            augment = DeviceAugment(cfg, cuda)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [f"{w.filename}:{w.lineno}: {w.message}" for w in caught if "synchroniz" in str(w.message)]
    assert not syncs, "\n".join(syncs)
    x, side = _smooth(4).pin_memory(), torch.cuda.Stream(cuda)
    with torch.cuda.stream(side):
        out, _ = augment(x.to(cuda, non_blocking=True), torch.arange(4).pin_memory().to(cuda, non_blocking=True))
    torch.cuda.current_stream(cuda).wait_stream(side)
    # Normalisation only (no RandAugment, erasing or mixing): x*255-scaled constants against /255 first,
    # a few float32 roundings of values below 4 in size.
    assert torch.allclose(out.cpu(), (x.float() / 255 - 0.5) / 0.25, atol=4 * 2**-22)
