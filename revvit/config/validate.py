"""The config gate: every cross-key check and every refusal, run once before any process starts.

Each check fails with the keys involved and the fix, before any model or data is built: a wrong
combination found an hour into a multi-node job costs far more than a strict check at start. The
modules that read the config do not check it again; they may assume what this module guarantees.

The names a string key accepts are listed in options.py. Config sits below the modules that implement
them, so the gate checks names without importing those modules (tools/run_net.py imports them before
calling the gate, but the gate does not depend on that).
"""

import math

from revvit.utils.errors import UserError

from .options import (
    CHECKPOINT_TYPES,
    DATASETS,
    DECODING_BACKENDS,
    DROP_PATH_MODES,
    ENSEMBLE_METHODS,
    FUSIONS,
    HEAD_ACTS,
    LOSS_FUNCS,
    LR_POLICIES,
    MODEL_NAMES,
    OPTIMIZERS,
    POOL_MODES,
    PRECISION_DTYPES,
    RES_PATHS,
    fusion_ok,
)

__all__ = ["NUMERIC_RANGES", "ConfigError", "check_launch", "validate_cfg"]


class ConfigError(UserError, ValueError):
    """A config that cannot work; the message names the keys and what to change."""



# Where each numeric key must lie, in interval notation ("[0, 1)": 0 <= value < 1), for a scalar or
# for every entry of a list; None (off) is always allowed. Every float key must also be finite, listed
# or not. One table rather than one check per key: a key added to defaults.py gets its range here.
NUMERIC_RANGES = {
    "SOLVER.BASE_LR": "[0, inf)",
    "SOLVER.COSINE_END_LR": "[0, inf)",
    "SOLVER.WARMUP_START_LR": "[0, inf)",
    "SOLVER.WARMUP_EPOCHS": "[0, inf)",
    "SOLVER.WEIGHT_DECAY": "[0, inf)",
    "SOLVER.MOMENTUM": "[0, 1)",
    "SOLVER.DAMPENING": "[0, 1]",
    "SOLVER.BETAS": "[0, 1)",
    "SOLVER.CLIP_GRAD_VAL": "(0, inf)",
    "SOLVER.CLIP_GRAD_L2NORM": "(0, inf)",
    "SOLVER.LRS": "[0, inf)",
    "SOLVER.STEPS": "[0, inf)",
    "SOLVER.MAX_EPOCH": "[1, inf)",
    "SOLVER.GAMMA": "(0, inf)",
    "SOLVER.STEP_SIZE": "(0, inf)",
    "SOLVER.WARMUP_FACTOR": "[0, inf)",
    "SOLVER.LAYER_DECAY": "(0, 1]",
    "TRAIN.KILL_LOSS_EXPLOSION_FACTOR": "[0, inf)",
    "TRAIN.STOP_GRACE_PERIOD": "(0, inf)",
    "TRAIN.EVAL_PERIOD": "[0, inf)",
    "TRAIN.CHECKPOINT_PERIOD": "[1, inf)",
    "MODEL.DROPOUT_RATE": "[0, 1)",
    "MVIT.DROPPATH_RATE": "[0, 1)",
    "MVIT.DROPOUT_RATE": "[0, 1)",
    "MVIT.MLP_RATIO": "(0, inf)",
    "MVIT.HEAD_INIT_SCALE": "(0, inf)",
    "MVIT.LAYER_SCALE_INIT_VALUE": "[0, inf)",
    "DATA.STD": "(0, inf)",
    "DATA.IN_VAL_CROP_RATIO": "[0, 1]",
    "DATA.TARGET_FPS": "(0, inf)",
    "DATA.TRAIN_JITTER_SCALES_RELATIVE": "(0, 1]",
    "DATA.TRAIN_JITTER_ASPECT_RELATIVE": "(0, inf)",
    "AUG.RE_PROB": "[0, 1]",
    "AUG.COLOR_JITTER": "[0, inf)",
    "AUG.NUM_SAMPLE": "[1, inf)",
    "MIXUP.ALPHA": "[0, inf)",
    "MIXUP.CUTMIX_ALPHA": "[0, inf)",
    "MIXUP.PROB": "[0, 1]",
    "MIXUP.SWITCH_PROB": "[0, 1]",
    "MIXUP.LABEL_SMOOTH_VALUE": "[0, 1)",
    "DATA_LOADER.NUM_WORKERS": "[-1, inf)",
    "DATA_LOADER.PREFETCH_FACTOR": "[1, inf)",
    "DATA_LOADER.NUM_RETRIES": "[0, inf)",
    "DATA_LOADER.TIMEOUT": "[0, inf)",
    "DIST_TIMEOUT": "(0, inf)",
    "LOG_PERIOD": "[1, inf)",
}

# PySlowFast options revvit does not implement. None of the published reversible configs sets
# them; refusing is better than training a different model than the YAML describes.
_NOT_IMPLEMENTED = (
    "MVIT.REL_POS_SPATIAL",
    "MVIT.REL_POS_TEMPORAL",
    "MVIT.REL_POS_ZERO_INIT",
    "MVIT.POOL_FIRST",
    "MVIT.USE_FIXED_SINCOS_POS",
    "DATA.MULTI_LABEL",
    "TRAIN.CHECKPOINT_INFLATE",
    "TRAIN.CHECKPOINT_IN_INIT",
)


def _check(condition, message):
    if not condition:
        raise ConfigError(message)


def _get(cfg, full_key):
    node = cfg
    for part in full_key.split("."):
        node = node[part]
    return node


def _numbers(value):
    """The numbers in a config value: itself, or the entries of a (nested) list; booleans are not numbers."""
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


def _inside(x, interval):
    low, high = (float(v) for v in interval[1:-1].split(","))
    above = x >= low if interval[0] == "[" else x > low
    below = x <= high if interval[-1] == "]" else x < high
    return above and below


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def _check_numbers(cfg):
    """Every number finite (a NaN fails the comparisons of later checks and would be blamed on another
    key), and every key of NUMERIC_RANGES inside its range."""
    for key, value in _leaves(cfg):
        bad = [x for x in _numbers(value) if not math.isfinite(x)]
        _check(not bad, f"{key} is {value}: it must be a finite number (NaN and infinity cannot train).")
    for key, interval in NUMERIC_RANGES.items():
        value = _get(cfg, key)
        if value is None:
            continue
        bad = [x for x in _numbers(value) if not _inside(x, interval)]
        if bad:
            what = "every entry" if isinstance(value, (list, tuple)) else "it"
            raise ConfigError(f"{key} is {value}: {what} must lie in {interval}. Fix {key} in the YAML or on the command line.")


def _check_dataset_names(cfg):
    for section in ("TRAIN", "TEST"):
        name = cfg[section].DATASET
        _check(
            name.lower() in DATASETS,
            f"{section}.DATASET '{name}' is not a data set revvit reads; known: {', '.join(DATASETS)} "
            "(imagenet: class folders of images, kinetics: CSV lists of videos).",
        )


def _check_not_implemented(cfg):
    on = [key for key in _NOT_IMPLEMENTED if _get(cfg, key)]
    _check(not on, f"{', '.join(on)} True: not implemented in revvit (no published reversible config uses it); set it False.")


def _check_reversible(m):
    """MVIT.REV.*: the reversible encoder's options and the blocks that must be stage transitions."""
    _check(
        not m.CLS_EMBED_ON,
        "MVIT.REV.ENABLE True needs MVIT.CLS_EMBED_ON False: a reversible encoder has no class "
        "token (the published reversible checkpoints have none). Add 'MVIT.CLS_EMBED_ON False' "
        "to the YAML or the command line.",
    )
    for key in ("RESPATH_FUSE", "PRE_Q_FUSION"):
        _check(fusion_ok(m.REV[key]), f"MVIT.REV.{key} '{m.REV[key]}' is not one of {FUSIONS} or concat_linear[_mult[_drop]].")
    _check(m.REV.RES_PATH in RES_PATHS, f"MVIT.REV.RES_PATH must be one of {RES_PATHS}, got '{m.REV.RES_PATH}'.")
    _check(
        m.REV.DROP_PATH_MODE in DROP_PATH_MODES,
        f"MVIT.REV.DROP_PATH_MODE must be one of {DROP_PATH_MODES}, got '{m.REV.DROP_PATH_MODE}'.",
    )
    changes = sorted({i for i, *_ in m.POOL_Q_STRIDE} | {i for i, _ in m.DIM_MUL} | {i for i, _ in m.HEAD_MUL})
    missing = [i for i in changes if i not in m.REV.BUFFER_LAYERS]
    _check(
        not missing,
        f"Blocks {missing} change resolution or width (MVIT.POOL_Q_STRIDE / DIM_MUL / HEAD_MUL) "
        "and so cannot be reversible; list them in MVIT.REV.BUFFER_LAYERS.",
    )
    _check(not m.DIM_MUL_IN_ATT, "MVIT.DIM_MUL_IN_ATT is a non-reversible option; set it False with MVIT.REV.ENABLE.")


def _check_model(cfg):
    m = cfg.MVIT
    if m.REV.ENABLE:
        _check_reversible(m)
    _check(
        cfg.MODEL.MODEL_NAME in MODEL_NAMES,
        f"MODEL.MODEL_NAME '{cfg.MODEL.MODEL_NAME}' is not a registered model; it must be one of {MODEL_NAMES}.",
    )
    _check(
        m.EMBED_DIM % m.NUM_HEADS == 0,
        f"MVIT.EMBED_DIM {m.EMBED_DIM} must be divisible by MVIT.NUM_HEADS {m.NUM_HEADS} (every head gets an equal share).",
    )
    _check(m.NORM == "layernorm", f"MVIT.NORM must be layernorm, got '{m.NORM}'.")
    _check(m.MODE in POOL_MODES, f"MVIT.MODE must be one of {POOL_MODES}, got '{m.MODE}'.")
    _check(m.DEPTH >= 1, "MVIT.DEPTH must be at least 1.")
    for key in ("DIM_MUL", "HEAD_MUL", "POOL_Q_STRIDE", "POOL_KV_STRIDE"):
        for entry in m[key]:
            _check(0 <= entry[0] < m.DEPTH, f"MVIT.{key} entry {list(entry)} names block {entry[0]}, outside 0..{m.DEPTH - 1} (MVIT.DEPTH).")
    for i in m.REV.BUFFER_LAYERS:
        _check(0 <= i < m.DEPTH, f"MVIT.REV.BUFFER_LAYERS names block {i}, outside 0..{m.DEPTH - 1}.")

    dims = 2 if m.PATCH_2D else 3
    for key in ("PATCH_KERNEL", "PATCH_STRIDE", "PATCH_PADDING"):
        _check(len(m[key]) == dims, f"MVIT.{key} needs {dims} values with MVIT.PATCH_2D {m.PATCH_2D}, got {list(m[key])}.")
    _check(
        cfg.DATA.TRAIN_CROP_SIZE == cfg.DATA.TEST_CROP_SIZE,
        f"DATA.TRAIN_CROP_SIZE ({cfg.DATA.TRAIN_CROP_SIZE}) and DATA.TEST_CROP_SIZE ({cfg.DATA.TEST_CROP_SIZE}) "
        "must be equal: the position embeddings are sized for one token grid.",
    )
    stride_hw = m.PATCH_STRIDE[-1]
    _check(
        cfg.DATA.TRAIN_CROP_SIZE % stride_hw == 0,
        f"DATA.TRAIN_CROP_SIZE {cfg.DATA.TRAIN_CROP_SIZE} is not divisible by the patch stride "
        f"{stride_hw} (MVIT.PATCH_STRIDE); choose a crop that is a multiple of {stride_hw}.",
    )
    if not m.PATCH_2D:
        _check(
            cfg.DATA.NUM_FRAMES % m.PATCH_STRIDE[0] == 0,
            f"DATA.NUM_FRAMES {cfg.DATA.NUM_FRAMES} is not divisible by the temporal patch stride {m.PATCH_STRIDE[0]}.",
        )
    _check(cfg.MODEL.NUM_CLASSES >= 1, "MODEL.NUM_CLASSES must be positive.")
    _check(cfg.MODEL.HEAD_ACT in HEAD_ACTS, f"MODEL.HEAD_ACT must be one of {HEAD_ACTS}, got '{cfg.MODEL.HEAD_ACT}'.")
    _check(cfg.MODEL.LOSS_FUNC in LOSS_FUNCS, f"MODEL.LOSS_FUNC must be one of {LOSS_FUNCS}, got '{cfg.MODEL.LOSS_FUNC}'.")


def _check_data(cfg):
    data, test = cfg.DATA, cfg.TEST
    _check(
        data.DECODING_BACKEND in DECODING_BACKENDS,
        f"DATA.DECODING_BACKEND must be one of {tuple(DECODING_BACKENDS)}, got '{data.DECODING_BACKEND}'.",
    )
    _check(data.ENSEMBLE_METHOD in ENSEMBLE_METHODS, f"DATA.ENSEMBLE_METHOD must be one of {ENSEMBLE_METHODS}, got '{data.ENSEMBLE_METHOD}'.")
    _check(test.NUM_SPATIAL_CROPS in (1, 3), f"TEST.NUM_SPATIAL_CROPS must be 1 or 3, got {test.NUM_SPATIAL_CROPS}.")
    # PySlowFast tests once per entry of TEST.NUM_TEMPORAL_CLIPS (each as NUM_ENSEMBLE_VIEWS); revvit tests once.
    _check(
        list(test.NUM_TEMPORAL_CLIPS) in ([], [test.NUM_ENSEMBLE_VIEWS]),
        f"TEST.NUM_TEMPORAL_CLIPS {list(test.NUM_TEMPORAL_CLIPS)} asks for one test run per entry, which revvit does "
        "not do; set TEST.NUM_TEMPORAL_CLIPS [] and TEST.NUM_ENSEMBLE_VIEWS to the number of clips, one run per value.",
    )
    _check_loading(cfg)
    _check(not cfg.AUG.RE_SPLIT, "AUG.RE_SPLIT True needs AugMix-style clean splits, which revvit does not make; set it False.")
    evaluates_video = (cfg.TRAIN.ENABLE and cfg.TRAIN.DATASET == "kinetics") or (test.ENABLE and test.DATASET == "kinetics")
    if evaluates_video:
        _check(
            data.TRAIN_JITTER_SCALES[0] >= data.TEST_CROP_SIZE,
            f"DATA.TRAIN_JITTER_SCALES[0] ({data.TRAIN_JITTER_SCALES[0]}) is the short side of evaluation "
            f"frames and must be at least DATA.TEST_CROP_SIZE ({data.TEST_CROP_SIZE}).",
        )
    mix = cfg.MIXUP
    if mix.ENABLE:
        _check(
            mix.ALPHA > 0 or mix.CUTMIX_ALPHA > 0,
            "MIXUP.ENABLE is True but MIXUP.ALPHA and MIXUP.CUTMIX_ALPHA are both 0; raise one or set MIXUP.ENABLE False.",
        )
        per_process = cfg.TRAIN.BATCH_SIZE // max(1, cfg.NUM_GPUS)
        _check(
            (per_process * cfg.AUG.NUM_SAMPLE) % 2 == 0,
            f"Mixup pairs each sample with another, so the per-process training batch must be even; it is "
            f"{per_process} (TRAIN.BATCH_SIZE {cfg.TRAIN.BATCH_SIZE} // NUM_GPUS {max(1, cfg.NUM_GPUS)}) x "
            f"AUG.NUM_SAMPLE {cfg.AUG.NUM_SAMPLE}. Change TRAIN.BATCH_SIZE or AUG.NUM_SAMPLE.",
        )


def _check_loading(cfg):
    """AUG.ON_DEVICE and the DATA_LOADER keys: of their type, and what the device pipeline can run."""
    on_device, workers, loader = cfg.AUG.ON_DEVICE, cfg.DATA_LOADER.NUM_WORKERS, cfg.DATA_LOADER
    _check(
        on_device is None or isinstance(on_device, bool),
        f"AUG.ON_DEVICE is {on_device!r}: it must be True, False or None (None: on when the run trains on CUDA).",
    )
    _check(
        isinstance(workers, int) and not isinstance(workers, bool),
        f"DATA_LOADER.NUM_WORKERS is {workers!r}: it must be a number of workers (0: none; -1: the machine's cores per process).",
    )
    aug = cfg.AUG
    _check(
        on_device is not True or not aug.ENABLE or not aug.AA_TYPE or aug.AA_TYPE.startswith("rand"),
        f"AUG.ON_DEVICE True runs RandAugment policies ('rand-...') on the device; AUG.AA_TYPE '{aug.AA_TYPE}' is "
        "another kind. Set AUG.ON_DEVICE False (or None, which keeps it in the workers).",
    )
    if loader.GPU_DECODE:
        _check(on_device is not False, "DATA_LOADER.GPU_DECODE decodes on the training device, which needs the device pipeline; set AUG.ON_DEVICE None or True.")
        _check(
            cfg.TRAIN.DATASET == "imagenet" and cfg.AUG.NUM_SAMPLE == 1 and not (cfg.AUG.ENABLE and not cfg.AUG.AA_TYPE),
            "DATA_LOADER.GPU_DECODE decodes training JPEGs of TRAIN.DATASET imagenet, one crop each (AUG.NUM_SAMPLE 1), "
            "with RandAugment rather than colour jitter (AUG.AA_TYPE set); set DATA_LOADER.GPU_DECODE False otherwise.",
        )


def _check_solver(cfg):
    s = cfg.SOLVER
    _check(s.OPTIMIZING_METHOD in OPTIMIZERS, f"SOLVER.OPTIMIZING_METHOD must be one of {OPTIMIZERS}, got '{s.OPTIMIZING_METHOD}'.")
    _check(s.LR_POLICY in LR_POLICIES, f"SOLVER.LR_POLICY must be one of {LR_POLICIES}, got '{s.LR_POLICY}'.")
    _check(s.LAYER_DECAY == 1.0, f"SOLVER.LAYER_DECAY {s.LAYER_DECAY} is not supported by revvit; set it to 1.0.")
    if s.LR_POLICY == "steps_with_relative_lrs":
        _check(len(s.STEPS) == len(s.LRS) and len(s.STEPS) > 0, "SOLVER.STEPS and SOLVER.LRS must be non-empty and of equal length for steps_with_relative_lrs.")
    if s.LR_POLICY == "cosine":
        _check(s.COSINE_END_LR <= s.BASE_LR, f"SOLVER.COSINE_END_LR ({s.COSINE_END_LR}) must not exceed SOLVER.BASE_LR ({s.BASE_LR}).")
        _check(
            not s.COSINE_AFTER_WARMUP or s.WARMUP_EPOCHS < s.MAX_EPOCH,
            f"SOLVER.WARMUP_EPOCHS ({s.WARMUP_EPOCHS}) must be shorter than SOLVER.MAX_EPOCH ({s.MAX_EPOCH}) "
            "with SOLVER.COSINE_AFTER_WARMUP; shorten the warmup or train longer.",
        )


def _check_checkpoints(cfg):
    for section in ("TRAIN", "TEST"):
        kind = cfg[section].CHECKPOINT_TYPE
        _check(kind in CHECKPOINT_TYPES, f"{section}.CHECKPOINT_TYPE '{kind}' is not supported; only 'pytorch' (.pyth) files load. Set it to pytorch.")


def _check_processes(cfg):
    _check(cfg.NUM_GPUS >= 0 and cfg.NUM_SHARDS >= 1, "NUM_GPUS must be >= 0 and NUM_SHARDS >= 1.")
    _check(0 <= cfg.SHARD_ID < cfg.NUM_SHARDS, f"SHARD_ID {cfg.SHARD_ID} must be in 0..NUM_SHARDS-1 ({cfg.NUM_SHARDS - 1}).")
    _check(
        not (cfg.MODEL.FSDP and cfg.MODEL.FP16_ALLREDUCE),
        "MODEL.FP16_ALLREDUCE is a DDP gradient hook; with MODEL.FSDP True gradients are reduce-scattered in float32 "
        "(or in the TRAIN.MIXED_PRECISION policy): set MODEL.FP16_ALLREDUCE False.",
    )
    _check(
        cfg.TRAIN.MIXED_PRECISION_DTYPE in PRECISION_DTYPES,
        f"TRAIN.MIXED_PRECISION_DTYPE '{cfg.TRAIN.MIXED_PRECISION_DTYPE}' is not one of {', '.join(PRECISION_DTYPES)}.",
    )
    procs = max(1, cfg.NUM_GPUS)
    for key in ("TRAIN", "TEST"):
        bs = cfg[key].BATCH_SIZE
        _check(
            bs % procs == 0 and bs >= procs,
            f"{key}.BATCH_SIZE {bs} is the batch of one machine and must be a positive multiple "
            f"of its processes (NUM_GPUS {cfg.NUM_GPUS}).",
        )


def check_launch(cfg, init_method, external_launcher=None):
    """A job of several machines needs a meeting point; say so before any process starts.

    ``external_launcher`` names torchrun / SLURM when one started this process (it then provides
    the meeting point through its environment).
    """
    if cfg.NUM_SHARDS > 1 and init_method is None and external_launcher is None:
        raise ConfigError(
            f"NUM_SHARDS {cfg.NUM_SHARDS} asks for a job on {cfg.NUM_SHARDS} machines, and they need a meeting point. "
            "On one machine: add 'NUM_SHARDS 1' to the command line. On several machines: run the same command on "
            "each with 'SHARD_ID <0..NUM_SHARDS-1>' and the same '--init_method tcp://<host of shard 0>:<free port>' "
            "(or file://<shared path>)."
        )


def validate_cfg(cfg):
    """Raise ConfigError on the first impossible combination in ``cfg``."""
    _check_numbers(cfg)  # first: every later check compares numbers
    _check_dataset_names(cfg)
    _check_processes(cfg)  # first: the mixup check below divides the batch by the processes
    _check_not_implemented(cfg)
    _check_model(cfg)
    _check_data(cfg)
    _check_solver(cfg)
    _check_checkpoints(cfg)
    return cfg
