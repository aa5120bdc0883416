"""The on-device half of the training recipe (AUG.ON_DEVICE): uint8 batches from the workers finished on
the training device, one batch ahead on a side CUDA stream.

- ``prefetch.py``        ``device_batches``: the side stream, one batch ahead, seeded per (epoch, rank, step)
- ``device_augment.py``  ``DeviceAugment``: RandAugment, normalisation, erasing, channel order, mixing, in order
- ``rand_augment.py``    timm's RandAugment draws applied to a uint8 batch as tensor operations
- ``mixing.py``          timm's Mixup / CutMix for images and clips (also the workers' collate)
- ``gpu_decode.py``      DATA_LOADER.GPU_DECODE: JPEGs decoded and cropped with nvJPEG

Streams: whatever runs here runs on the prefetch stream, which waits for nothing the training stream
does; a tensor it uses reaches the device on that stream (pinned, ``non_blocking``), and no step of it
waits for the GPU, except the nvJPEG decode, which does by design.
"""

from .device_augment import DeviceAugment, augment_on_device, batch_seed
from .gpu_decode import decode_crops, encoded_crop, gpu_decoding
from .mixing import build_mixup, mix
from .prefetch import device_batches
from .rand_augment import BatchRandAugment

__all__ = [
    "BatchRandAugment",
    "DeviceAugment",
    "augment_on_device",
    "batch_seed",
    "build_mixup",
    "decode_crops",
    "device_batches",
    "encoded_crop",
    "gpu_decoding",
    "mix",
]
