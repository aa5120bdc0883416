"""Classify image and video files with a checkpoint: the command line of tools/predict.py.

Every input goes through the config's own test pipeline, so a prediction is what testing would
have scored: images through the data set's evaluation transform, videos through the test split of
the video data set (``TEST.NUM_ENSEMBLE_VIEWS x TEST.NUM_SPATIAL_CROPS`` views, decoded and cropped
by the same code, their scores combined by ``DATA.ENSEMBLE_METHOD`` as the test's ``TestMeter`` combines
them). The video data set is given the inputs themselves, unlabelled.

Class names come from the checkpoint (ours carry the training set's), else, for the official
ImageNet-1k and Kinetics-400 checkpoints, from torchvision's weights metadata; else ``class <i>``.
"""

import argparse
import csv
import json
import os
import stat
import sys

import torch

from revvit.config import load_config
from revvit.datasets import BadSampleError, dataset_class, dataset_name, model_channels
from revvit.datasets.imagenet import IMAGE_EXTENSIONS, build_image_transform, read_image
from revvit.models import build_model
from revvit.models.factory import list_models
from revvit.utils import checkpoint as cu
from revvit.utils import distributed as du
from revvit.utils import logging
from revvit.utils.errors import UserError
from revvit.utils.meters import TestMeter

from .evaluate import scores
from .precision import precision
from .weights import start_weights

logger = logging.get_logger(__name__)

__all__ = ["class_names", "find_inputs", "main", "predict_files"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")


def _official_names(num_classes):
    """ImageNet-1k / Kinetics-400 names in the order of the official heads (torchvision ships both lists)."""
    if num_classes == 1000:
        from torchvision.models import ViT_B_16_Weights

        return list(ViT_B_16_Weights.IMAGENET1K_V1.meta["categories"])
    if num_classes == 400:
        from torchvision.models.video import R3D_18_Weights

        return list(R3D_18_Weights.KINETICS400_V1.meta["categories"])
    return None


def class_names(num_classes, from_checkpoint=None):
    """Names of the ``num_classes`` outputs: the checkpoint's, the official lists, or ``class <i>``.

    A checkpoint whose list does not have one name per output (a training set with fewer class
    folders than MODEL.NUM_CLASSES) names what it can; the others are ``class <i>``, with a warning.
    """
    if from_checkpoint is not None and len(from_checkpoint) == num_classes:
        return list(from_checkpoint)
    if from_checkpoint is not None:
        print(
            f"predict.py: warning: the checkpoint names {len(from_checkpoint)} classes but the model has "
            f"{num_classes} outputs (MODEL.NUM_CLASSES); outputs without a name are shown as 'class <i>'.",
            file=sys.stderr,
        )
        names = list(from_checkpoint)[:num_classes]
        return names + [f"class {i}" for i in range(len(names), num_classes)]
    return _official_names(num_classes) or [f"class {i}" for i in range(num_classes)]


def is_video_model(cfg):
    return not cfg.MVIT.PATCH_2D


def find_inputs(paths, video):
    """Files to classify: files as given, folders walked (sorted) for image or video files."""
    extensions = VIDEO_EXTENSIONS if video else IMAGE_EXTENSIONS
    found = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(extensions)]
        else:
            found.append(path)
    return found


def unreadable_reason(path):
    """Why ``path`` cannot be an input, or None: missing, or not a regular file (a FIFO or a device
    would block the reader forever)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return "no such file" if not os.path.lexists(path) else f"cannot be read ({e.strerror})"
    if not stat.S_ISREG(mode):
        return "is a directory without image or video files" if stat.S_ISDIR(mode) else "not a regular file (a pipe or a device)"
    return None


def _image_scores(model, cfg, paths, device):
    transform = build_image_transform(cfg, train=False)
    for path in paths:
        try:
            x = transform(read_image(path))
        except BadSampleError as e:
            yield path, None, e.reason
            continue
        x = model_channels(x, cfg)
        yield path, scores(model(x[None].to(device)), cfg)[0], None


def _video_scores(model, cfg, paths, device):
    dataset = dataset_class(dataset_name(cfg, "test"))(cfg, "test", None, videos=paths)
    views = len(dataset) // dataset.num_videos
    ensembles = TestMeter(len(paths), views, cfg.MODEL.NUM_CLASSES, 0, cfg.DATA.ENSEMBLE_METHOD)  # as the test split's
    for video, path in enumerate(paths):
        items = [dataset[video * views + v] for v in range(views)]
        if not all(meta["valid"] for _, _, _, meta in items):
            yield path, None, "cannot be decoded as a video (see the warning above)"
            continue
        views_scores = scores(model(torch.stack([clip for clip, _, _, _ in items]).to(device)), cfg)
        ensembles.update_stats(views_scores, torch.zeros(views, dtype=torch.long), torch.full((views,), video))
        combined = ensembles.video_preds[video]
        # A sum of probabilities is reported as their mean, so that the scores stay probabilities.
        yield path, combined / views if cfg.DATA.ENSEMBLE_METHOD == "sum" else combined, None


@torch.no_grad()
def predict_files(model, cfg, paths, names, topk=5, device=torch.device("cpu")):
    """``(results, skipped)``: per readable input its top-k ``(name, index, score)``; unreadable ones with the reason."""
    model.eval()
    score_inputs = _video_scores if is_video_model(cfg) else _image_scores
    skipped = [(p, unreadable_reason(p)) for p in paths if unreadable_reason(p)]
    readable = [p for p in paths if not unreadable_reason(p)]
    results = []
    k = min(topk, cfg.MODEL.NUM_CLASSES)
    with precision(cfg, device).autocast(device):  # the arithmetic of training and testing
        for path, score, error in score_inputs(model, cfg, readable, device) if readable else ():
            if score is None:
                skipped.append((path, error))
                continue
            score = score.float().cpu()
            if not bool(torch.isfinite(score).all()):
                raise NonFiniteScoresError(
                    f"the model's scores for {path} are not finite ({int(torch.isnan(score).sum())} NaN and "
                    f"{int(torch.isinf(score).sum())} inf of {score.numel()}), so they rank nothing; nothing was predicted. "
                    "The weights are finite, so the model overflowed on this input: predict in float32 "
                    "(--opts TRAIN.MIXED_PRECISION False), or use an earlier checkpoint of the run if it was diverging."
                )
            values, indices = score.topk(k)
            results.append((path, [(names[i], i, v) for v, i in zip(values.tolist(), indices.tolist())]))
    return results, skipped


def write_predictions(results, skipped, path):
    """``.csv``: one row per (input, rank); ``.json``: a list of inputs with their top-k, and the skipped files."""
    if path.endswith(".json"):
        doc = {
            "predictions": [{"input": p, "top": [{"class": n, "index": i, "score": s} for n, i, s in top]} for p, top in results],
            "skipped": [{"input": p, "error": e} for p, e in skipped],
        }
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
        return
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["input", "rank", "class", "index", "score"])
        for p, top in results:
            for rank, (n, i, s) in enumerate(top, start=1):
                w.writerow([p, rank, n, i, f"{s:.6f}"])


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="predict.py",
        description="Top-k classes of image or video files, through the config's test transform.",
    )
    parser.add_argument("--cfg", dest="cfg_file", required=True, help="YAML config the checkpoint was trained with")
    parser.add_argument(
        "--checkpoint",
        default="",
        help=f"checkpoint file, or an official model name ({', '.join(list_models(pretrained=True))}); default: MODEL.PRETRAINED",
    )
    parser.add_argument("--topk", type=int, default=5, help="classes shown per input (default 5)")
    parser.add_argument("--output", default="", help="also write the predictions to FILE.csv or FILE.json")
    parser.add_argument("inputs", nargs="+", help="image / video files or folders")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.output and not args.output.endswith((".csv", ".json")):
        parser.error(f"--output must end in .csv or .json, got '{args.output}'")
    if args.topk < 1:
        parser.error("--topk must be at least 1")
    return args


class OutputError(UserError):
    """--output cannot be written where it points."""


class NonFiniteScoresError(UserError):
    """The model's scores for an input are NaN or infinite: no class can be named from them."""


def _check_output(path):
    """Before any prediction: a folder that is missing or not writable would lose every result."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"--output {path}: the folder {folder} does not exist; create it or write the file elsewhere.")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"--output {path}: the folder {folder} is not writable; write the file elsewhere.")


def run(argv):
    """Predict and print; returns ``(cfg, results, skipped)``."""
    args = parse_args(argv)
    cfg = load_config(args)  # no setup_logging: stdout holds only predictions; warnings reach stderr
    if args.output:
        _check_output(args.output)
    path = start_weights(cfg, "predict", args.checkpoint).path
    model = build_model(cfg)
    info = cu.load_checkpoint(path, model, clear_name_patterns=cfg.TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN)
    device = du.get_device(cfg)  # a GPU when there is one and NUM_GPUS > 0
    names = class_names(cfg.MODEL.NUM_CLASSES, info["class_names"])
    paths = find_inputs(args.inputs, is_video_model(cfg))
    results, skipped = predict_files(model.to(device), cfg, paths, names, args.topk, device)
    for p, top in results:
        print(f"{p}: " + ", ".join(f"{n} {s:.3f}" for n, _, s in top))
    for p, error in skipped:
        print(f"predict.py: skipped {p}: {error}", file=sys.stderr)
    if args.output:
        write_predictions(results, skipped, args.output)
    return cfg, results, skipped


def main(argv=None):
    """Exit 0 when at least one input was classified; 1 for a user error or when none could be read."""
    try:
        cfg, results, skipped = run(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return 1
    if not results:
        kind = "videos" if is_video_model(cfg) else "images"
        what = f"none of the {len(skipped)} input(s) could be read" if skipped else f"no {kind} found in the inputs"
        print(f"predict.py: error: {what}; this config classifies {kind}.", file=sys.stderr)
        return 1
    return 0
