"""ImageNet (and any image set in its layout): class folders, the DeiT training recipe.

Layout of ``DATA.PATH_TO_DATA_DIR``::

    train/<class>/<image>   val/<class>/<image>   [test/<class>/<image>]

Classes are the sorted folder names of ``train/``, hidden ones aside (of the split's own folder when
there is no ``train/``), so a val folder that lacks a class cannot shift the indices of the others; a
val class unknown to training is an error, and so is a training class folder without images. ImageNet
publishes no test labels, so the ``test`` split reads ``test/`` when it exists and ``val/`` otherwise,
as PySlowFast evaluates ImageNet models on val.

Train with ``AUG.ON_DEVICE`` (see device_augment.py): decode (libjpeg-turbo through
``torchvision.io.decode_jpeg``, the same pixels as PIL's decoder) and timm's random-resized-crop and
flip on the uint8 tensor; the rest of the recipe runs on the batch on the training device.

Train otherwise: timm's ``create_transform`` (random-resized-crop with ``AUG.INTERPOLATION``, flip, RandAugment
``AUG.AA_TYPE``, colour jitter when RandAugment is off, normalisation, random erasing ``AUG.RE_*``);
with ``AUG.ENABLE False`` only the crop and flip. Val/test: short side resized (bicubic) to
``TEST_CROP_SIZE / DATA.IN_VAL_CROP_RATIO``, centre crop. ``AUG.NUM_SAMPLE > 1`` gives a list of
that many crops per training item (repeated augmentation).
"""

import logging
import os

import numpy as np
import torch
from iopath.common.file_io import g_pathmgr
from PIL import Image
from timm.data import create_transform
from torchvision.datasets.folder import find_classes, make_dataset
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import Compose

from .bad_samples import BadSampleError, fetch_with_retries
from .build import DATASET_REGISTRY
from .channels import model_channels
from .device.device_augment import augment_on_device
from .errors import DataLayoutError
from .device.gpu_decode import encoded_crop, gpu_decoding
from revvit.utils.seeding import keyed_items
from .timm_compat import crop_range, pillow_safe

__all__ = ["Imagenet", "build_image_transform", "build_uint8_crop", "read_image", "read_image_tensor"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_LAYOUT = "Expected DATA.PATH_TO_DATA_DIR to hold train/<class>/<image> and val/<class>/<image> (ImageNet layout)."


def read_image(path):
    """The RGB image at ``path``, fully decoded (so that truncated files fail here, as bad samples)."""
    try:
        with g_pathmgr.open(path, "rb") as f, Image.open(f) as im:
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadSampleError(path, f"cannot read as an image ({err.__class__.__name__}: {err})") from None


def read_image_tensor(path):
    """The RGB image at ``path`` as uint8 ``[3, H, W]``: JPEGs through libjpeg-turbo (torchvision), others through PIL."""
    try:
        with g_pathmgr.open(path, "rb") as f:
            data = f.read()
        # JPEG alone leaves PIL: torchvision's decode_image reads PNG, WebP and GIF too, but unlike read_image
        # (the CPU recipe's) gives uint16 for a 16-bit PNG and every frame of a GIF, and refuses BMP and TIFF.
        if data[:2] == b"\xff\xd8":
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    except RuntimeError as err:  # torchvision's decoder reports damaged files so
        raise BadSampleError(path, f"cannot read as an image ({err.__class__.__name__}: {str(err).splitlines()[-1]})") from None
    except OSError as err:
        raise BadSampleError(path, f"cannot read as an image ({err.__class__.__name__}: {err})") from None
    return torch.from_numpy(np.array(read_image(path))).permute(2, 0, 1).contiguous()


def _train_transform_args(cfg):
    data, aug = cfg.DATA, cfg.AUG
    scale, ratio = crop_range(cfg)
    return dict(
        scale=scale,
        ratio=ratio,
        hflip=0.5 if data.RANDOM_FLIP else 0.0,
        color_jitter=aug.COLOR_JITTER if aug.ENABLE else None,
        auto_augment=(aug.AA_TYPE or None) if aug.ENABLE else None,
        interpolation=aug.INTERPOLATION,
        mean=tuple(data.MEAN),
        std=tuple(data.STD),
        re_prob=aug.RE_PROB if aug.ENABLE else 0.0,
        re_mode=aug.RE_MODE,
        re_count=aug.RE_COUNT,
    )


def build_uint8_crop(cfg):
    """The worker half of the training recipe under AUG.ON_DEVICE: timm's own random-resized-crop and
    flip (its "primary" transforms, which torchvision runs on uint8 tensors), and colour jitter when
    RandAugment is off; RandAugment, normalisation and erasing run on the device."""
    primary, secondary, _ = create_transform(cfg.DATA.TRAIN_CROP_SIZE, is_training=True, separate=True, **_train_transform_args(cfg))
    device_side = cfg.AUG.ENABLE and cfg.AUG.AA_TYPE
    return primary if device_side or not secondary.transforms else Compose(primary.transforms + secondary.transforms)


def build_image_transform(cfg, train):
    """The DeiT / PySlowFast ImageNet recipe for a training or an evaluation image."""
    data = cfg.DATA
    mean, std = tuple(data.MEAN), tuple(data.STD)
    if not train:
        squash = data.IN_VAL_CROP_RATIO == 0.0  # PySlowFast: resize to the crop, no centre crop
        return create_transform(
            data.TEST_CROP_SIZE,
            is_training=False,
            interpolation="bicubic",
            crop_pct=1.0 if squash else data.IN_VAL_CROP_RATIO,
            crop_mode="squash" if squash else "center",
            mean=mean,
            std=std,
        )
    return pillow_safe(create_transform(data.TRAIN_CROP_SIZE, is_training=True, **_train_transform_args(cfg)))


def _class_folders(directory):
    # torchvision's find_classes counts every folder; a hidden one (.ipynb_checkpoints, .Trash) is no class.
    try:
        return [name for name in find_classes(directory)[0] if not name.startswith(".")]
    except FileNotFoundError:  # no folder at all: the split is empty, which _samples says
        return []


def _layout(cfg, split, data_dir):
    """``(split_dir, classes)`` of ``split``, or DataLayoutError naming the folder and the fix."""
    if not g_pathmgr.isdir(data_dir):
        raise DataLayoutError(
            f"ImageNet data directory not found: {data_dir} (DATA.PATH_TO_DATA_DIR). {_LAYOUT} "
            "Set DATA.PATH_TO_DATA_DIR to that folder."
        )
    folder = split
    if split == "test" and not g_pathmgr.isdir(os.path.join(data_dir, "test")):
        folder = "val"
    split_dir = os.path.join(data_dir, folder)
    if not g_pathmgr.isdir(split_dir):
        raise DataLayoutError(f"ImageNet split folder not found: {split_dir} (needed for the {split} split). {_LAYOUT}")
    train_dir = os.path.join(data_dir, "train")
    class_dir = train_dir if g_pathmgr.isdir(train_dir) else split_dir
    classes = _class_folders(class_dir)
    if len(classes) > cfg.MODEL.NUM_CLASSES:
        raise DataLayoutError(
            f"{len(classes)} class folders in {class_dir} but "
            f"MODEL.NUM_CLASSES is {cfg.MODEL.NUM_CLASSES}; set MODEL.NUM_CLASSES {len(classes)} "
            "(or remove the folders that are not classes)."
        )
    known = set(classes)
    unknown = [n for n in _class_folders(split_dir) if n not in known]
    if unknown:
        raise DataLayoutError(
            f"Class folders {unknown[:5]} of {split_dir} do not exist in {train_dir}; every {folder} class "
            "must also be a training class (same folder name)."
        )
    return split_dir, classes


def _samples(split, split_dir, classes):
    """``[(path, class index)]`` of the split's images (torchvision's ``make_dataset``: sorted by class,
    then by path, subfolders of a class folder included), or DataLayoutError. A training class folder
    without images is refused: the model would get a class it never sees, silently."""
    present = set(_class_folders(split_dir))  # val may lack classes of train
    class_to_idx = {name: i for i, name in enumerate(classes) if name in present}
    samples = make_dataset(split_dir, class_to_idx, extensions=IMAGE_EXTENSIONS, allow_empty=True) if class_to_idx else []
    if not samples:
        raise DataLayoutError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) in the class folders of {split_dir}: the split is empty. {_LAYOUT}"
        )
    if split == "train":
        empty = sorted(set(class_to_idx) - {classes[label] for _, label in samples})
        if empty:
            folders = ", ".join(os.path.join(split_dir, name) for name in empty[:5]) + (" ..." if len(empty) > 5 else "")
            raise DataLayoutError(
                f"{len(empty)} training class folder(s) hold no images ({', '.join(IMAGE_EXTENSIONS)}): {folders}. "
                "Put the class's images in it, or remove the folder (classes are the sorted folder names of "
                "train/, so the indices of the classes after it shift)."
            )
    return samples


@DATASET_REGISTRY.register()
class Imagenet(torch.utils.data.Dataset):
    @staticmethod
    def check_layout(cfg, split, data_dir):
        """The folders of ``split`` exist, fit MODEL.NUM_CLASSES, and hold images (every training class:
        one listing of the split, as the data set makes it)."""
        _samples(split, *_layout(cfg, split, data_dir))

    def __init__(self, cfg, split, data_dir):
        self.cfg = cfg
        self.split = split
        self.split_dir, self.classes = _layout(cfg, split, data_dir)
        self._samples = _samples(split, self.split_dir, self.classes)
        self._num_samples = cfg.AUG.NUM_SAMPLE if split == "train" else 1
        # AUG.ON_DEVICE: training items are uint8 crops; the device finishes them (device_augment.py).
        self._uint8 = split == "train" and augment_on_device(cfg)
        self._transform = build_uint8_crop(cfg) if self._uint8 else build_image_transform(cfg, split == "train")
        self._read = read_image_tensor if self._uint8 else read_image
        self._encoded = self._uint8 and gpu_decoding(cfg)
        logger.info("ImageNet %s: %d images, %d classes from %s", split, len(self._samples), len(self.classes), self.split_dir)

    def __len__(self):
        return len(self._samples)

    def label(self, index):
        return self._samples[index][1]

    @keyed_items  # a training key (epoch, index): the draws are seeded from it
    def __getitem__(self, index):
        def load(i):
            if self._encoded:  # DATA_LOADER.GPU_DECODE: bytes and the crop box; the GPU decodes
                flip = 0.5 if self.cfg.DATA.RANDOM_FLIP else 0.0
                return encoded_crop(self._samples[i][0], *crop_range(self.cfg), flip), i
            image = self._read(self._samples[i][0])
            crops = [self._finish(self._transform(image)) for _ in range(self._num_samples)]
            return (crops[0] if self._num_samples == 1 else crops), i

        item, skipped = fetch_with_retries(
            load, index, len(self._samples), substitute=self.split == "train", num_retries=self.cfg.DATA_LOADER.NUM_RETRIES
        )
        meta = {"skipped": len(skipped), "skipped_paths": skipped, "valid": item is not None}
        if item is None:
            size = self.cfg.DATA.TEST_CROP_SIZE
            return torch.zeros(3, size, size), self._samples[index][1], index, meta
        image, index = item
        if self._encoded:
            image, meta["crop"] = image
        return image, self._samples[index][1], index, meta

    def _finish(self, image):
        return image if self._uint8 else model_channels(image, self.cfg)  # uint8: the device flips after normalising
