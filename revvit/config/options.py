"""The values each string key of the config accepts, listed once.

Config sits below every module that implements these options (models, datasets, solver, engine) in
the layering (config <- models / datasets / solver <- engine), so it may not import them to ask for
their names: the names live here, the gate (validate.py) refuses anything else, the implementations
import what they dispatch on from here (``datasets/kinetics.py`` maps DECODING_BACKENDS,
``models/blocks.py`` builds from parse_fusion), and tests/config/test_validate.py checks that each
implementation's dispatch table has exactly these names (model names, losses, optimizers, LR policies,
head activations, pooling modes, fusions, data sets, demo sets).
"""

import math
from dataclasses import dataclass

__all__ = [
    "CHECKPOINT_TYPES",
    "DATASETS",
    "DECODING_BACKENDS",
    "DEMO_SETS",
    "DIST_BACKENDS",
    "DROP_PATH_MODES",
    "ENSEMBLE_METHODS",
    "FUSIONS",
    "HEAD_ACTS",
    "INTERPOLATIONS",
    "LOSS_FUNCS",
    "LR_POLICIES",
    "MODEL_NAMES",
    "NORMS",
    "OPTIMIZERS",
    "POOL_MODES",
    "PRECISION_DTYPES",
    "RE_MODES",
    "RES_PATHS",
    "FusionSpec",
    "fusion_ok",
    "parse_fusion",
]

MODEL_NAMES = ("MViT",)  # models/__init__.py MODEL_REGISTRY
LOSS_FUNCS = ("cross_entropy", "soft_cross_entropy", "bce", "bce_logit")  # engine/losses.py
OPTIMIZERS = ("sgd", "adam", "adamw")  # solver/optimizer.py
LR_POLICIES = ("cosine", "steps_with_relative_lrs", "constant")  # solver/lr_policy.py
PRECISION_DTYPES = ("auto", "bfloat16", "float16")  # engine/precision.py precision()
# PySlowFast's default "torchvision" is accepted for its YAML files: torchvision no longer decodes
# video, so PyAV does it. name -> the decoder that runs.
DECODING_BACKENDS = {"pyav": "pyav", "torchvision": "pyav"}
FUSIONS = ("add", "max", "min", "avg", "concat")  # models/blocks.py TwoStreamFusion; also concat_linear: parse_fusion
ENSEMBLE_METHODS = ("sum", "max")  # utils/meters.py TestMeter
HEAD_ACTS = ("softmax", "sigmoid", "none")  # engine/evaluate.py scores
POOL_MODES = ("conv", "avg", "max")  # models/attention.py
NORMS = ("layernorm",)  # models/mvit.py builds LayerNorm only
RES_PATHS = ("conv", "max")  # models/reversible.py
DROP_PATH_MODES = ("block", "branch")  # models/reversible.py: official one mask per block, or one per branch
CHECKPOINT_TYPES = ("pytorch",)  # utils/checkpoint.py reads PySlowFast .pyth files only
DATASETS = ("imagenet", "kinetics")  # datasets/ DATASET_REGISTRY (names as in PySlowFast YAML, any case)
DEMO_SETS = ("", "digits", "moving_digits")  # datasets/demo.py DEMO_SETS; "": real data
# timm's create_transform and RandAugment take these; the device path (gpu_decode.py, rand_augment.py)
# maps "random" to bicubic, so PIL-only names (box, hamming, lanczos) would differ between the paths.
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "random")
RE_MODES = ("const", "rand", "pixel")  # timm RandomErasing: fill with zeros, one colour per box, or per pixel
DIST_BACKENDS = ("nccl", "gloo", "ucc", "mpi")  # torch.distributed backends (CPU processes use gloo whatever is set)


@dataclass(frozen=True)
class FusionSpec:
    """A parsed MVIT.REV.*_FUSION mode: one of FUSIONS, or ``[ln+]concat_linear[_mult[_drop]]``."""

    kind: str  # one of FUSIONS, or "concat_linear": a residual MLP over the concatenated streams
    layernorm: bool = False  # "ln+" prefix: LayerNorm before that MLP
    mlp_ratio: float = 1.0
    dropout: float = 0.0


def parse_fusion(mode):
    """The FusionSpec of ``mode``, or None when malformed; models/blocks.py TwoStreamFusion builds from it.

    The MLP's width ratio must be a finite positive number (its hidden layer has ratio x width units)
    and its dropout a probability below 1 (1 would drop every unit).
    """
    if not isinstance(mode, str):
        return None
    if mode in FUSIONS:
        return FusionSpec(mode)
    layernorm = mode.startswith("ln+")
    parts = (mode[3:] if layernorm else mode).split("_")
    if parts[:2] != ["concat", "linear"] or len(parts) > 4:
        return None
    try:
        numbers = [float(p) for p in parts[2:]]
    except ValueError:
        return None
    spec = FusionSpec("concat_linear", layernorm, *numbers)
    if not (math.isfinite(spec.mlp_ratio) and spec.mlp_ratio > 0 and 0 <= spec.dropout < 1):
        return None
    return spec


def fusion_ok(mode):
    """True for the two-stream fusion modes TwoStreamFusion builds: FUSIONS or [ln+]concat_linear[_mult[_drop]]."""
    return parse_fusion(mode) is not None
