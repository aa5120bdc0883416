"""DATA_LOADER.GPU_DECODE: training JPEGs decoded on the GPU (nvJPEG through torchvision).

Optional and off by default. With it (and AUG.ON_DEVICE on a CUDA run) a worker reads a file's bytes
and draws timm's random-resized-crop box and flip from the JPEG header's size, without decoding; the
training process decodes the batch with ``torchvision.io.decode_jpeg(device="cuda")``, cuts the boxes
and resizes them on the GPU, then hands the uint8 crops to the device half of the recipe. The draws
are the worker pipeline's (same generators, same order), so only the resize differs from it: the same
antialiased bicubic, on the GPU. Files that are not JPEG are decoded on the host.
"""

import io

import torch
from iopath.common.file_io import g_pathmgr
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.io import ImageReadMode, decode_image, decode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from revvit.utils import distributed as du

from ..bad_samples import BadSampleError
from .device_augment import augment_on_device
from .rand_augment import host_to_device

__all__ = ["decode_crops", "encoded_crop", "gpu_decoding"]


def gpu_decoding(cfg):
    """GPU_DECODE asked for, and usable: the device pipeline runs on CUDA."""
    return bool(cfg.DATA_LOADER.GPU_DECODE) and augment_on_device(cfg) and du.uses_cuda(cfg)


def encoded_crop(path, scale, ratio, flip_prob):
    """``(bytes [N] uint8, [top, left, height, width, flip] int64)`` of one training image, drawn as
    timm's ``RandomResizedCropAndInterpolation`` and ``RandomHorizontalFlip`` draw them."""
    try:
        with g_pathmgr.open(path, "rb") as f:
            data = f.read()
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            size = im.size
            im.verify()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadSampleError(path, f"cannot read as an image ({err.__class__.__name__}: {err})") from None
    top, left, height, width = RandomResizedCropAndInterpolation.get_params(Image.new("1", size), scale, ratio)
    flip = bool(flip_prob > 0 and torch.rand(1) < flip_prob)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8), torch.tensor([top, left, height, width, int(flip)])


def decode_crops(encoded, boxes, size, interpolation, device):
    """uint8 ``[B, 3, size, size]`` on ``device`` from the encoded files and their crop boxes."""
    jpeg = [i for i, e in enumerate(encoded) if e[:2].tolist() == [0xFF, 0xD8]]
    images = [None] * len(encoded)
    if jpeg:
        if device.type == "cuda":
            # torchvision's decode_jpegs_cuda takes its output tensors from the caching allocator's pool
            # of the current stream (the prefetch stream), but nvJPEG writes them on a stream of its own
            # that waits for nothing. The pool hands out a block freed on the current stream at once:
            # kernels queued there earlier may still read or write it. So the current stream's queue is
            # drained first; it holds at most the previous batch's augmentation, queued a step ago, and
            # the decode holds the host until it is done anyway. Afterwards torchvision makes the
            # current stream wait for nvJPEG's, so the crops below read finished images.
            torch.cuda.current_stream(device).synchronize()
        decoded = decode_jpeg([encoded[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        for i, image in zip(jpeg, decoded):
            images[i] = image
    for i, e in enumerate(encoded):
        if images[i] is None:
            images[i] = host_to_device(decode_image(e, mode=ImageReadMode.RGB), device)
    mode = InterpolationMode(interpolation) if interpolation in ("bilinear", "bicubic", "nearest") else InterpolationMode.BICUBIC
    crops = []
    for image, (top, left, height, width, flip) in zip(images, boxes.tolist()):
        crop = TF.resized_crop(image, top, left, height, width, [size, size], interpolation=mode, antialias=True)
        crops.append(TF.horizontal_flip(crop) if flip else crop)
    return torch.stack(crops)
