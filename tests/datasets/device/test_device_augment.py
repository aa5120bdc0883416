"""AUG.ON_DEVICE: uint8 workers, the device half of the recipe against timm's, seeding, config."""

import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import Mixup, create_transform
from timm.data.auto_augment import AugmentOp, rand_augment_transform
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dataset_media import make_cfg, textured_static_video
from exact_reference import GEOMETRIC_DRAWS, TF32, smooth_reference, source_points_reference
from revvit.config import ConfigError, get_cfg, merge_file, merge_opts, validate_cfg
from revvit.datasets import build_dataset, construct_loader, device_batches
from revvit.datasets import loader as loader_module
from revvit.datasets.device.device_augment import DeviceAugment, augment_on_device, seeded
from revvit.datasets.imagenet import build_uint8_crop, read_image, read_image_tensor
from revvit.datasets.device.rand_augment import BatchRandAugment, _geometric, _recording, _sharpness, source_points

CPU = torch.device("cpu")
MEAN = (0.485, 0.456, 0.406)
FILL = tuple(round(255 * m) for m in MEAN)
HPARAMS = {"img_mean": FILL, "translate_const": int(224 * 0.45), "interpolation": Image.BICUBIC}


def smooth_image(h=120, w=160):
    """Slowly varying colours: interpolation kernels differ there only by their rounding."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 100 * np.sin(xx / 13 + yy / 29), 128 + 90 * np.cos(yy / 11), 128 + 60 * np.sin((xx + yy) / 17)], -1)
    return img.clip(0, 255).astype(np.uint8)


def as_tensor(img):
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()


def on_device_cfg(dataset, data_dir, **overrides):
    return make_cfg(dataset, data_dir, AUG__ON_DEVICE=True, AUG__ENABLE=True, **overrides)


# ---- workers ----------------------------------------------------------------------------------


def test_workers_emit_uint8_crops_under_on_device(imagenet_dir, kinetics_dir):
    images = next(iter(construct_loader(on_device_cfg("imagenet", imagenet_dir, TRAIN__BATCH_SIZE=4, MIXUP__ENABLE=True), "train")))
    assert images[0][0].dtype == torch.uint8 and tuple(images[0][0].shape) == (4, 3, 32, 32)
    assert images[1].dtype == torch.int64  # mixing moved to the device
    clips = next(iter(construct_loader(on_device_cfg("kinetics", kinetics_dir, TRAIN__BATCH_SIZE=2), "train")))
    assert clips[0][0].dtype == torch.uint8 and tuple(clips[0][0].shape) == (2, 3, 4, 32, 32)
    # Evaluation, and the default AUG.ON_DEVICE (None) on a machine without CUDA, keep the worker pipeline.
    val = next(iter(construct_loader(on_device_cfg("imagenet", imagenet_dir, TRAIN__BATCH_SIZE=4), "val")))
    assert val[0][0].dtype == torch.float32
    cfg = make_cfg("imagenet", imagenet_dir, NUM_GPUS=1)
    assert augment_on_device(cfg) == torch.cuda.is_available()


def test_off_is_todays_worker_pipeline_exactly(imagenet_dir):
    cfg = make_cfg("imagenet", imagenet_dir, AUG__ON_DEVICE=False, AUG__ENABLE=True, DATA__REVERSE_INPUT_CHANNEL=True)
    dataset = build_dataset("imagenet", cfg, "train")
    transform = create_transform(
        32, is_training=True, hflip=0.5, color_jitter=0.4, auto_augment=cfg.AUG.AA_TYPE, interpolation="bicubic",
        mean=(0.5,) * 3, std=(0.25,) * 3, re_prob=0.25, re_mode="pixel", re_count=1,
    )
    for i in range(3):
        random.seed(i), np.random.seed(i), torch.manual_seed(i)
        ours = dataset[i][0]
        random.seed(i), np.random.seed(i), torch.manual_seed(i)
        theirs = transform(read_image(dataset._samples[i][0])).flip(0)
        assert torch.equal(ours, theirs)
    batches = [1, 2]
    assert device_batches(batches, cfg, CPU, 0) is batches


def test_crop_and_flip_are_timms_on_the_decoded_tensor(tmp_path):
    img = smooth_image()
    Image.fromarray(img).save(tmp_path / "a.jpg", quality=95)
    pil = read_image(tmp_path / "a.jpg")
    decoded = read_image_tensor(str(tmp_path / "a.jpg"))
    assert torch.equal(decoded, as_tensor(np.asarray(pil)))  # libjpeg-turbo both ways: the same pixels
    cfg = make_cfg("imagenet", tmp_path, AUG__ENABLE=True, DATA__TRAIN_CROP_SIZE=64)
    ours = build_uint8_crop(cfg)
    primary, _, _ = create_transform(64, is_training=True, separate=True, interpolation="bicubic")
    for seed in range(20):
        random.seed(seed), torch.manual_seed(seed)
        a = ours(decoded)
        random.seed(seed), torch.manual_seed(seed)
        b = as_tensor(np.asarray(primary(pil)))
        # Same crop box and flip; PIL's and torchvision's uint8 antialiased bicubic round their
        # fixed-point sums independently: at most one grey level apart.
        assert a.dtype == torch.uint8 and (a.int() - b.int()).abs().max() <= 1


# ---- RandAugment ------------------------------------------------------------------------------


def timm_draws(policy, n, seed):
    """The (op, arguments) timm's RandAugment applies to ``n`` images in turn, seen through spies."""
    ra = rand_augment_transform(policy, dict(HPARAMS))
    seen = []
    for op in ra.ops:
        fn = op.aug_fn
        op.aug_fn = lambda img, *args, _fn=fn, _name=op.name, **kw: (seen[-1].append((_name, args)), _fn(img, *args, **kw))[1]
    random.seed(seed), np.random.seed(seed)
    for _ in range(n):
        seen.append([])
        ra(Image.fromarray(smooth_image(32, 32)))
    return seen


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "rand-m7-n4-mstd0.5-inc1", "rand-m9-mstd0.5"])
def test_rand_augment_draws_what_timm_draws(policy):
    ours = BatchRandAugment(policy, 224, MEAN)
    random.seed(3), np.random.seed(3)
    assert ours.plan(40) == timm_draws(policy, 40, 3)


PIXEL_OPS = ["AutoContrast", "Equalize", "Invert", "PosterizeIncreasing", "Posterize", "SolarizeIncreasing", "Solarize",
             "SolarizeAdd", "ColorIncreasing", "Color", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"]


@pytest.mark.parametrize("name", PIXEL_OPS)
def test_pixel_ops_are_pils_to_one_grey_level(name):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8).repeat(6, 0).repeat(6, 1)  # sharp edges, full range
    ra = BatchRandAugment("rand-m9-mstd0.5-inc1", 224, MEAN)
    for seed in range(4):
        op = AugmentOp(name, prob=1.0, magnitude=9, hparams=dict(HPARAMS))
        random.seed(seed)
        theirs = np.asarray(op(Image.fromarray(img))).astype(int)
        random.seed(seed)
        ours = ra.apply(as_tensor(img)[None], [_one_plan(op)])[0].permute(1, 2, 0).numpy().astype(int)
        # The same integer arithmetic except float32 products that land on .0 boundaries: one level.
        assert np.abs(ours - theirs).max() <= 1


def _one_plan(op):
    """timm's draws for one application of ``op`` (from the global ``random``), as a plan."""
    return _recording(op)([])


def test_posterize_to_zero_bits_is_black():
    # Magnitude noise reaches level 10 (2% of the draws at m9, mstd0.5), where PosterizeIncreasing
    # keeps 0 bits. Pillow >= 11 refuses 0 bits (ValueError in timm's worker pipeline); older
    # Pillow, and this op, give the image that keeps no bit: black.
    ra = BatchRandAugment("rand-m9-mstd0.5-inc1", 224, MEAN)
    out = ra.apply(as_tensor(smooth_image(8, 8))[None], [[("PosterizeIncreasing", (0,))]])
    assert int(out.max()) == 0


@pytest.mark.parametrize("name", ["Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"])
def test_geometric_ops_agree_with_pil_on_smooth_images(name):
    img = smooth_image()
    ra = BatchRandAugment("rand-m9-mstd0.5-inc1", 224, MEAN)
    op = AugmentOp(name, prob=1.0, magnitude=9, hparams=dict(HPARAMS))
    for seed in range(4):
        random.seed(seed)
        theirs = np.asarray(op(Image.fromarray(img))).astype(int)
        random.seed(seed)
        ours = ra.apply(as_tensor(img)[None], [_one_plan(op)])[0].permute(1, 2, 0).numpy().astype(int)
        fill_theirs, fill_ours = (theirs == FILL).all(-1), (ours == FILL).all(-1)
        # Same geometry: the same pixels fall outside the image.
        assert (fill_theirs != fill_ours).mean() < 0.002
        inside = ~(fill_theirs | fill_ours)
        # Bicubic a=-0.75 (grid_sample) vs a=-0.5 (PIL): on a smooth image the kernels differ by a
        # fraction of the local second difference (< 1 level here) plus each side's rounding.
        assert np.abs(ours - theirs)[inside].max() <= 2


def test_affine_coordinates_are_float32_under_tf32():
    # TF32 rounds a matrix entry such as cos 27 deg by up to 2**-12 of it: 0.05 px at u = 223.5. The
    # coordinates must not go through a matrix product, whatever its precision.
    matrices = [_geometric(name, value, 224, 224) for name, value in GEOMETRIC_DRAWS]
    with TF32():
        src = source_points(matrices, 224, 224, CPU).double().numpy()
    exact, bound = source_points_reference(matrices, 224, 224)
    assert src.shape == (len(matrices), 224, 224, 2)
    assert (np.abs(src - exact) <= bound).all(), np.abs(src - exact).max()


def test_sharpness_smoothing_is_exact_under_tf32():
    # Full-range noise puts many 3x3 sums S near a rounding boundary of S / 13 (the nearest is 1/26
    # away); 1/13 in TF32 is off by up to 2**-12 of it, 0.06 on a smoothed 255. Factor 0 blends to the
    # smoothed image itself: every pixel must be the integer filter's.
    x = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with TF32():
        out = _sharpness(x, [0.0] * 4)
    assert np.array_equal(out.numpy(), smooth_reference(x.numpy()))


def test_each_image_and_each_clip_draws_its_own_ops(tmp_path):
    img = as_tensor(smooth_image(32, 32))
    ra = BatchRandAugment("rand-m9-mstd0.5-inc1", 32, MEAN)
    random.seed(0), np.random.seed(0)
    out = ra.apply(img.expand(16, -1, -1, -1).contiguous(), ra.plan(16))
    assert len({o.numpy().tobytes() for o in out}) > 8  # per image, not one draw for the batch
    # A clip of 4 identical frames: one draw for the clip, so its frames stay identical.
    clips = img.expand(6 * 4, -1, -1, -1).contiguous()
    random.seed(1), np.random.seed(1)
    out = ra.apply(clips, ra.plan(6), frames=4).view(6, 4, 3, 32, 32)
    assert all(torch.equal(c[0], c[t]) for c in out for t in range(4))
    assert len({c[0].numpy().tobytes() for c in out}) > 2


# ---- the device pipeline ----------------------------------------------------------------------


def test_normalisation_and_channel_order(tmp_path):
    cfg = make_cfg("imagenet", tmp_path, AUG__ON_DEVICE=True, DATA__REVERSE_INPUT_CHANNEL=True)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    out, labels = DeviceAugment(cfg, CPU)(x, torch.arange(4))
    ref = ((x.float() / 255 - 0.5) / 0.25).flip(1)
    # x*255-scaled mean/std vs /255 first: a few float32 roundings of values below 4 in size.
    assert torch.allclose(out, ref, atol=4 * 2**-22) and torch.equal(labels, torch.arange(4))


class DeviceOps(TorchDispatchMode):
    """Records every op that leaves a tensor off the CPU."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.device.type != "cpu" for t in tree_leaves(out)):
            self.ops.append(str(func))
        return out


def test_building_the_device_half_runs_nothing_on_the_device(tmp_path):
    # It is built on the training stream and runs on the prefetch stream, which waits for nothing the
    # training stream does: whatever the device half keeps must come to the device on the stream that
    # uses it (the CUDA side: test_device_augment_cuda.py).
    cfg = make_cfg("imagenet", tmp_path, AUG__ON_DEVICE=True, AUG__ENABLE=True, MIXUP__ENABLE=True)
    with DeviceOps() as seen:
        augment = DeviceAugment(cfg, torch.device("meta"))
    assert seen.ops == []
    assert all(t.device.type == "cpu" for t in vars(augment).values() if isinstance(t, torch.Tensor))


def test_mixing_weights_and_targets_are_timms(tmp_path):
    cfg = make_cfg("imagenet", tmp_path, AUG__ON_DEVICE=True, MIXUP__ENABLE=True, TRAIN__BATCH_SIZE=4)
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 1])
    timm_mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1, num_classes=3)
    for seed in range(6):
        with seeded(seed, CPU):
            out, targets = DeviceAugment(cfg, CPU)(x, labels)
        np.random.seed(seed % 2**32)
        ref, ref_targets = timm_mixup((x.float() / 255 - 0.5) / 0.25, labels)
        assert torch.equal(targets, ref_targets) and torch.allclose(out, ref, atol=1e-5)


def fake_batches(n=4, b=4):
    gen = torch.Generator().manual_seed(0)
    return [([torch.randint(0, 256, (b, 3, 16, 16), dtype=torch.uint8, generator=gen)], torch.arange(b) % 3, torch.arange(b), {}) for _ in range(n)]


def test_draws_depend_on_seed_epoch_rank_and_step_only(tmp_path):
    cfg = make_cfg("imagenet", tmp_path, AUG__ON_DEVICE=True, AUG__ENABLE=True, MIXUP__ENABLE=True, DATA__TRAIN_CROP_SIZE=16)
    batches = fake_batches()

    def run(epoch, rank=0, start=0):
        return [b[0][0] for b in device_batches(batches[start:], cfg, CPU, epoch, rank, start_step=start)]

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    first = run(0)
    # The caller's generators are left where they were: the training loop's own draws do not move.
    after = (random.random(), np.random.random(), torch.rand(1).item())
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    assert (random.random(), np.random.random(), torch.rand(1).item()) == after
    assert all(torch.equal(a, b) for a, b in zip(first, run(0)))
    # A run resumed at step 2 replays steps 2 and 3 exactly.
    assert all(torch.equal(a, b) for a, b in zip(first[2:], run(0, start=2)))
    assert not torch.equal(first[0], run(1)[0]) and not torch.equal(first[0], run(0, rank=1)[0])
    assert not torch.equal(first[0], first[1])


def test_clips_are_finished_on_the_device_with_one_draw_per_clip(tmp_path):
    textured_static_video(tmp_path / "v.mp4")
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.csv").write_text("".join(f"v.mp4 {i % 3}\n" for i in range(4)))
    cfg = on_device_cfg("kinetics", tmp_path, TRAIN__BATCH_SIZE=4, AUG__RE_PROB=0.0)
    loader = construct_loader(cfg, "train")
    for inputs, labels, _, _ in device_batches(loader, cfg, CPU, 0):
        x = inputs[0]
        assert x.dtype == torch.float32 and tuple(x.shape) == (4, 3, 4, 32, 32)
        assert all(torch.equal(x[:, :, 0], x[:, :, t]) for t in range(4))  # static video, one draw per clip


# ---- config and loader settings ----------------------------------------------------------------


@pytest.mark.parametrize("text, value", [("True", True), ("False", False), ("None", None), ("null", None)])
def test_on_device_takes_true_false_none_from_yaml_and_command_line(tmp_path, text, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"AUG:\n  ON_DEVICE: {text}\nDATA_LOADER:\n  NUM_WORKERS: -1\n")
    cfg = merge_file(get_cfg(), str(path))
    assert cfg.AUG.ON_DEVICE is value and cfg.DATA_LOADER.NUM_WORKERS == -1
    cfg = merge_opts(get_cfg(), ["AUG.ON_DEVICE", text if text != "null" else "None", "DATA_LOADER.NUM_WORKERS", "-1"])
    assert cfg.AUG.ON_DEVICE is value and cfg.DATA_LOADER.NUM_WORKERS == -1


@pytest.mark.parametrize(
    "opts, match",
    [
        (["AUG.ON_DEVICE", "yes"], r"AUG.ON_DEVICE is 'yes': it must be True, False or None"),
        (["DATA_LOADER.NUM_WORKERS", "auto"], r"'DATA_LOADER.NUM_WORKERS'.*expects int.* -1 means the machine's cores per process"),
        (["DATA_LOADER.NUM_WORKERS", "-2"], r"DATA_LOADER.NUM_WORKERS is -2: it must lie in \[-1, inf\)"),
        (["DATA_LOADER.GPU_DECODE", "True", "AUG.ON_DEVICE", "False"], "GPU_DECODE"),
        (["AUG.ON_DEVICE", "True", "AUG.ENABLE", "True", "AUG.AA_TYPE", "original-mstd0.5"], "'rand-...'"),
    ],
)
def test_gate_refuses_bad_loading_values(opts, match):
    with pytest.raises(ConfigError, match=match):
        validate_cfg(merge_opts(get_cfg(), ["DATA.TEST_CROP_SIZE", "224"] + opts))


def test_auto_workers_are_cores_per_process(monkeypatch):
    cfg = get_cfg()
    cfg.DATA_LOADER.NUM_WORKERS, cfg.NUM_GPUS = -1, 4
    monkeypatch.setattr(loader_module.os, "sched_getaffinity", lambda _: set(range(48)), raising=False)
    assert loader_module.num_workers(cfg) == 11  # 48 cores / 4 processes, one left for the training loop
    cfg.NUM_GPUS = 1
    assert loader_module.num_workers(cfg) == 16  # capped
    cfg.DATA_LOADER.NUM_WORKERS = 0
    assert loader_module.num_workers(cfg) == 0  # 0 stays 0, as in PySlowFast


def test_a_small_shm_is_named_in_one_line(monkeypatch, caplog):
    monkeypatch.setattr(loader_module.shutil, "disk_usage", lambda _: type("U", (), {"free": 2**20})())
    monkeypatch.setattr(loader_module.os.path, "isdir", lambda _: True)
    with caplog.at_level(logging.WARNING):
        loader_module._warn_if_shm_is_small(batch_bytes=2**24, workers=8, prefetch=2)
    assert len(caplog.records) == 1 and "/dev/shm has 1 MiB free" in caplog.text and "--shm-size" in caplog.text


def test_gpu_decoding_path_gives_the_worker_crops(imagenet_dir, monkeypatch):
    # On a CPU machine GPU_DECODE is inactive; forcing the switch runs the same code with the CPU as
    # "the device": the decode and crop moved out of the worker must give the worker's crops exactly.
    from revvit.datasets import imagenet
    from revvit.datasets.device import gpu_decode

    cfg = on_device_cfg("imagenet", imagenet_dir, TRAIN__BATCH_SIZE=4, DATA_LOADER__GPU_DECODE=True)
    assert not gpu_decode.gpu_decoding(make_cfg("imagenet", imagenet_dir, DATA_LOADER__GPU_DECODE=True, AUG__ON_DEVICE=True))
    plain = build_dataset("imagenet", cfg, "train")
    monkeypatch.setattr(imagenet, "gpu_decoding", lambda _: True)
    encoded = build_dataset("imagenet", cfg, "train")
    for i in range(4):
        random.seed(i), torch.manual_seed(i)
        crop = plain[i][0]
        random.seed(i), torch.manual_seed(i)
        data, _, _, meta = encoded[i]
        assert data.ndim == 1 and data.dtype == torch.uint8
        assert torch.equal(gpu_decode.decode_crops([data], meta["crop"][None], 32, "bicubic", CPU)[0], crop)
    random.seed(0), torch.manual_seed(0)
    batch = next(iter(construct_loader(cfg, "train")))
    assert isinstance(batch[0][0], list) and tuple(batch[3]["crop"].shape) == (4, 5)
    monkeypatch.setattr(imagenet, "gpu_decoding", lambda _: False)
    out = next(iter(device_batches([batch], cfg, CPU, 0)))
    assert out[0][0].dtype == torch.float32 and tuple(out[0][0].shape) == (4, 3, 32, 32)
