"""The config gate: every key's type and range, every cross-key check and every refusal, run once
before any process starts.

Each check fails with the keys involved and the fix, before any model or data is built: a wrong
combination found an hour into a multi-node job costs far more than a strict check at start. The
modules that read the config do not check it again; they may assume what this module guarantees.
The gate raises nothing but ConfigError, whatever a key holds: first every key is checked against
its entry of KEYS (type, None or not, range, list length), so the cross-key checks that follow can
compare and divide without meeting a string, a None or a NaN.

The names a string key accepts are listed in options.py. Config sits below the modules that implement
them, so the gate checks names without importing those modules (tools/run_net.py imports them before
calling the gate, but the gate does not depend on that). The one library it asks is timm, whose own
parser reads AUG.AA_TYPE.
"""

import functools
import math
import re
from dataclasses import dataclass, field, replace

from revvit.utils.errors import UserError

from .derived import per_process_batch_size
from .options import (
    CHECKPOINT_TYPES,
    DATASETS,
    DECODING_BACKENDS,
    DEMO_SETS,
    DIST_BACKENDS,
    DROP_PATH_MODES,
    ENSEMBLE_METHODS,
    FUSIONS,
    HEAD_ACTS,
    INTERPOLATIONS,
    LOSS_FUNCS,
    LR_POLICIES,
    MODEL_NAMES,
    NORMS,
    OPTIMIZERS,
    POOL_MODES,
    PRECISION_DTYPES,
    RE_MODES,
    RES_PATHS,
    fusion_ok,
)

__all__ = ["KEYS", "OPTION_KEYS", "ConfigError", "Spec", "check_launch", "validate_cfg"]


class ConfigError(UserError, ValueError):
    """A config that cannot work; the message names the keys and what to change."""


@dataclass(frozen=True)
class Spec:
    """What one key may hold."""

    kind: type  # bool, int, float (an int is a float's value too), str or list (a tuple too: yacs keeps tuples)
    interval: str = ""  # numbers: where they must lie, "[0, 1)" meaning 0 <= value < 1
    items: tuple = ()  # list: one Spec for every entry, or one per position of a fixed-length row
    lengths: tuple = ()  # list: the lengths it may have; empty: any
    nullable: bool = False  # None (null in YAML) is a value of the key; defaults.py says what it means
    empty_ok: bool = True  # str: "" is a value of the key
    what: str = field(default="", compare=False)  # how a message describes it, where the generic words are unclear


def _int(interval="[0, inf)", what=""):
    return Spec(int, interval, what=what)


def _float(interval, what=""):
    return Spec(float, interval, what=what)


def _list(item, lengths=(), what=""):
    return Spec(list, items=(item,), lengths=lengths, what=what)


def _row(*items, what=""):
    return Spec(list, items=items, lengths=(len(items),), what=what)


def _nullable(spec):
    return replace(spec, nullable=True)


BOOL = Spec(bool)
STR = Spec(str)
NAME = Spec(str, empty_ok=False)  # a name or a path that must be given
POSITIVE = _int("[1, inf)")
PROBABILITY = _float("[0, 1]")  # 1 is a legitimate value: the event always happens
RATE = _float("[0, 1)")  # a fraction dropped or smoothed away: at 1 nothing would be left to learn from
_BLOCK = _int("[0, inf)")
_STRIDES = _row(_BLOCK, POSITIVE, POSITIVE, POSITIVE, what="[block, stride_t, stride_h, stride_w] with block >= 0, strides >= 1")
_MULTIPLIERS = _row(_BLOCK, _float("(0, inf)"), what="[block, multiplier] with block >= 0, multiplier > 0")
_PATCH = _list(POSITIVE, (2, 3))

# Every key of defaults.py, with what it may hold. A key added to defaults.py gets its entry here
# (tests/config/test_validate.py fails otherwise). Probabilities that may be 1 are PROBABILITY (an
# erasing, mixing or cutmix-instead-of-mixup probability of 1 is a recipe); fractions of a signal
# removed (dropout, drop path, label smoothing) are RATE: at 1 the model or the target carries nothing.
KEYS = {
    "TRAIN.ENABLE": BOOL,
    "TRAIN.DATASET": NAME,
    "TRAIN.BATCH_SIZE": POSITIVE,
    "TRAIN.EVAL_PERIOD": _int("[0, inf)"),  # 0: no validation
    "TRAIN.CHECKPOINT_PERIOD": POSITIVE,
    "TRAIN.AUTO_RESUME": BOOL,
    "TRAIN.CHECKPOINT_FILE_PATH": STR,
    "TRAIN.CHECKPOINT_TYPE": NAME,
    "TRAIN.CHECKPOINT_INFLATE": BOOL,
    "TRAIN.CHECKPOINT_EPOCH_RESET": BOOL,
    "TRAIN.CHECKPOINT_CLEAR_NAME_PATTERN": _list(NAME),
    "TRAIN.CHECKPOINT_IN_INIT": BOOL,
    "TRAIN.MIXED_PRECISION": BOOL,
    "TRAIN.MIXED_PRECISION_DTYPE": NAME,
    "TRAIN.KILL_LOSS_EXPLOSION_FACTOR": _float("[0, inf)"),  # 0: off
    "TRAIN.STOP_GRACE_PERIOD": _float("(0, inf)"),
    "AUG.ENABLE": BOOL,
    "AUG.NUM_SAMPLE": POSITIVE,
    "AUG.COLOR_JITTER": _float("[0, inf)"),
    "AUG.AA_TYPE": STR,  # "": no auto-augmentation; otherwise parsed by timm (_check_aa_type)
    "AUG.INTERPOLATION": NAME,
    "AUG.RE_PROB": PROBABILITY,
    "AUG.RE_MODE": NAME,
    "AUG.RE_COUNT": POSITIVE,  # timm draws the count in [1, RE_COUNT]
    "AUG.RE_SPLIT": BOOL,
    "AUG.ON_DEVICE": Spec(bool, nullable=True, what="True, False or None (None: on when the run trains on CUDA)"),
    "MIXUP.ENABLE": BOOL,
    "MIXUP.ALPHA": _float("[0, inf)"),
    "MIXUP.CUTMIX_ALPHA": _float("[0, inf)"),
    "MIXUP.PROB": PROBABILITY,
    "MIXUP.SWITCH_PROB": PROBABILITY,
    "MIXUP.LABEL_SMOOTH_VALUE": RATE,
    "TEST.ENABLE": BOOL,
    "TEST.DATASET": NAME,
    "TEST.BATCH_SIZE": POSITIVE,
    "TEST.CHECKPOINT_FILE_PATH": STR,
    "TEST.NUM_ENSEMBLE_VIEWS": POSITIVE,
    "TEST.NUM_SPATIAL_CROPS": POSITIVE,
    "TEST.CHECKPOINT_TYPE": NAME,
    "TEST.SAVE_RESULTS_PATH": STR,
    "TEST.NUM_TEMPORAL_CLIPS": _list(POSITIVE),
    "MODEL.ARCH": STR,
    "MODEL.MODEL_NAME": NAME,
    "MODEL.NUM_CLASSES": POSITIVE,
    "MODEL.LOSS_FUNC": NAME,
    "MODEL.DROPOUT_RATE": RATE,
    "MODEL.HEAD_ACT": NAME,
    "MODEL.ACT_CHECKPOINT": BOOL,
    "MODEL.DETACH_FINAL_FC": BOOL,
    "MODEL.FP16_ALLREDUCE": BOOL,
    "MODEL.FSDP": BOOL,
    "MODEL.PRETRAINED": STR,
    "MVIT.MODE": NAME,
    "MVIT.POOL_FIRST": BOOL,
    "MVIT.CLS_EMBED_ON": BOOL,
    "MVIT.PATCH_KERNEL": _PATCH,
    "MVIT.PATCH_STRIDE": _PATCH,
    "MVIT.PATCH_PADDING": _list(_int("[0, inf)"), (2, 3)),
    "MVIT.PATCH_2D": BOOL,
    "MVIT.EMBED_DIM": POSITIVE,
    "MVIT.NUM_HEADS": POSITIVE,
    "MVIT.MLP_RATIO": _float("(0, inf)"),
    "MVIT.QKV_BIAS": BOOL,
    "MVIT.DROPPATH_RATE": RATE,
    "MVIT.LAYER_SCALE_INIT_VALUE": _float("[0, inf)"),  # 0: off
    "MVIT.DEPTH": POSITIVE,
    "MVIT.NORM": NAME,
    "MVIT.DIM_MUL": _list(_MULTIPLIERS),
    "MVIT.HEAD_MUL": _list(_MULTIPLIERS),
    "MVIT.POOL_KV_STRIDE": _list(_STRIDES),
    "MVIT.POOL_KV_STRIDE_ADAPTIVE": _nullable(_list(POSITIVE, (3,))),  # None: POOL_KV_STRIDE applies
    "MVIT.POOL_Q_STRIDE": _list(_STRIDES),
    "MVIT.POOL_KVQ_KERNEL": _nullable(_list(POSITIVE, (3,))),  # None: derived from the strides
    "MVIT.ZERO_DECAY_POS_CLS": BOOL,
    "MVIT.NORM_STEM": BOOL,
    "MVIT.SEP_POS_EMBED": BOOL,
    "MVIT.DROPOUT_RATE": RATE,
    "MVIT.USE_ABS_POS": BOOL,
    "MVIT.REL_POS_SPATIAL": BOOL,
    "MVIT.REL_POS_TEMPORAL": BOOL,
    "MVIT.REL_POS_ZERO_INIT": BOOL,
    "MVIT.RESIDUAL_POOLING": BOOL,
    "MVIT.DIM_MUL_IN_ATT": BOOL,
    "MVIT.SEPARATE_QKV": BOOL,
    "MVIT.HEAD_INIT_SCALE": _float("(0, inf)"),
    "MVIT.USE_MEAN_POOLING": BOOL,
    "MVIT.USE_FIXED_SINCOS_POS": BOOL,
    "MVIT.REV.ENABLE": BOOL,
    "MVIT.REV.RESPATH_FUSE": NAME,
    "MVIT.REV.BUFFER_LAYERS": _list(_BLOCK),
    "MVIT.REV.RES_PATH": NAME,
    "MVIT.REV.PRE_Q_FUSION": NAME,
    "MVIT.REV.DROP_PATH_MODE": NAME,
    "DATA.PATH_TO_DATA_DIR": STR,
    "DATA.PATH_LABEL_SEPARATOR": NAME,  # str.split("") is an error
    "DATA.PATH_PREFIX": STR,
    "DATA.NUM_FRAMES": POSITIVE,
    "DATA.SAMPLING_RATE": POSITIVE,  # 0 repeats one frame; a negative step finds no clip in any video
    "DATA.MEAN": _list(_float("[0, 1]")),  # of [0, 1] pixels; one per input channel (_check_data)
    "DATA.STD": _list(_float("(0, inf)")),
    "DATA.INPUT_CHANNEL_NUM": _list(POSITIVE, (1, 2)),  # one entry per pathway
    "DATA.TRAIN_JITTER_SCALES": _list(POSITIVE, (2,)),
    "DATA.TRAIN_JITTER_SCALES_RELATIVE": _list(_float("(0, 1]"), (0, 2)),
    "DATA.TRAIN_JITTER_ASPECT_RELATIVE": _list(_float("(0, inf)"), (0, 2)),
    "DATA.TRAIN_CROP_SIZE": POSITIVE,
    "DATA.TEST_CROP_SIZE": POSITIVE,
    "DATA.TARGET_FPS": POSITIVE,
    "DATA.DECODING_BACKEND": NAME,
    "DATA.DECODING_SHORT_SIZE": POSITIVE,
    "DATA.INV_UNIFORM_SAMPLE": BOOL,
    "DATA.RANDOM_FLIP": BOOL,
    "DATA.MULTI_LABEL": BOOL,
    "DATA.ENSEMBLE_METHOD": NAME,
    "DATA.REVERSE_INPUT_CHANNEL": BOOL,
    "DATA.IN_VAL_CROP_RATIO": _float("(0, 1]"),  # the short side is resized to crop / ratio
    "DATA.USE_OFFSET_SAMPLING": BOOL,
    "DATA.DEMO": STR,
    "DATA.DEMO_CACHE_DIR": NAME,
    "SOLVER.BASE_LR": _float("[0, inf)"),
    "SOLVER.LR_POLICY": NAME,
    "SOLVER.COSINE_END_LR": _float("[0, inf)"),
    "SOLVER.GAMMA": _float("(0, inf)"),
    "SOLVER.STEP_SIZE": POSITIVE,
    "SOLVER.STEPS": _list(_int("[0, inf)")),
    "SOLVER.LRS": _list(_float("[0, inf)")),
    "SOLVER.MAX_EPOCH": POSITIVE,
    "SOLVER.MOMENTUM": _float("[0, 1)"),
    "SOLVER.DAMPENING": _float("[0, 1]"),
    "SOLVER.NESTEROV": BOOL,
    "SOLVER.WEIGHT_DECAY": _float("[0, inf)"),
    "SOLVER.WARMUP_FACTOR": _float("[0, inf)"),
    "SOLVER.WARMUP_EPOCHS": _float("[0, inf)"),
    "SOLVER.WARMUP_START_LR": _float("[0, inf)"),
    "SOLVER.OPTIMIZING_METHOD": NAME,
    "SOLVER.BASE_LR_SCALE_NUM_SHARDS": BOOL,
    "SOLVER.COSINE_AFTER_WARMUP": BOOL,
    "SOLVER.ZERO_WD_1D_PARAM": BOOL,
    "SOLVER.CLIP_GRAD_VAL": _nullable(_float("(0, inf)")),  # None: no clipping
    "SOLVER.CLIP_GRAD_L2NORM": _nullable(_float("(0, inf)")),  # None: no clipping
    "SOLVER.LAYER_DECAY": _float("(0, 1]"),
    "SOLVER.BETAS": _list(_float("[0, 1)"), (2,)),
    "DATA_LOADER.NUM_WORKERS": _int("[-1, inf)"),  # -1: the machine's cores per process
    "DATA_LOADER.PIN_MEMORY": BOOL,
    "DATA_LOADER.ENABLE_MULTI_THREAD_DECODE": BOOL,
    "DATA_LOADER.NUM_RETRIES": _int("[0, inf)"),
    "DATA_LOADER.PREFETCH_FACTOR": POSITIVE,
    "DATA_LOADER.GPU_DECODE": BOOL,
    "DATA_LOADER.TIMEOUT": _int("[0, inf)"),  # 0: no limit
    "TENSORBOARD.ENABLE": BOOL,
    "TENSORBOARD.LOG_DIR": STR,
    "NUM_GPUS": _int("[0, inf)"),
    "NUM_SHARDS": POSITIVE,
    "SHARD_ID": _int("[0, inf)"),
    "OUTPUT_DIR": NAME,
    "RNG_SEED": _int("[0, 18446744073709551615]"),  # torch.manual_seed takes at most 2**64 - 1
    "LOG_PERIOD": POSITIVE,
    "LOG_ITER_STATS_STDOUT": BOOL,
    "LOG_MODEL_INFO": BOOL,
    "DIST_BACKEND": NAME,
    "DETERMINISTIC": BOOL,
    "DIST_TIMEOUT": POSITIVE,
}

# The string keys that name an option, and the names each accepts (options.py). Keys with a message
# of their own (data sets, model names, checkpoint types, fusions) are checked where that message is.
OPTION_KEYS = {
    "TRAIN.MIXED_PRECISION_DTYPE": PRECISION_DTYPES,
    "AUG.INTERPOLATION": INTERPOLATIONS,
    "AUG.RE_MODE": RE_MODES,
    "MODEL.LOSS_FUNC": LOSS_FUNCS,
    "MODEL.HEAD_ACT": HEAD_ACTS,
    "MVIT.MODE": POOL_MODES,
    "MVIT.NORM": NORMS,
    "MVIT.REV.RES_PATH": RES_PATHS,
    "MVIT.REV.DROP_PATH_MODE": DROP_PATH_MODES,
    "DATA.DECODING_BACKEND": tuple(DECODING_BACKENDS),
    "DATA.ENSEMBLE_METHOD": ENSEMBLE_METHODS,
    "DATA.DEMO": DEMO_SETS,
    "SOLVER.LR_POLICY": LR_POLICIES,
    "SOLVER.OPTIMIZING_METHOD": OPTIMIZERS,
    "DIST_BACKEND": DIST_BACKENDS,
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


# ---- one key: type, None, range, length --------------------------------------------------------

_NOUNS = {bool: ("True or False", "booleans"), int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings")}


def _describe(spec, plural=False):
    """The words for what ``spec`` accepts: "an integer in [1, inf)", "a list of 3 integers in [1, inf)"."""
    if spec.what:
        text = spec.what
    elif spec.kind is list:
        count = "/".join(str(n) for n in spec.lengths)
        text = f"a list of {count + ' ' if count else ''}{_describe(spec.items[0], plural=True)}"
    else:
        text = _NOUNS[spec.kind][plural]
        if spec.kind is str and not spec.empty_ok:
            text = "non-empty " + text if plural else "a non-empty string"
        if spec.interval:
            text += f" in {spec.interval}"
    return f"None or {text}" if spec.nullable and not spec.what and not plural else text


def _bound(text):
    text = text.strip()
    return float(text) if any(c in text for c in ".einf") else int(text)  # ints stay exact beyond 2**53


@functools.lru_cache(maxsize=None)
def _bounds(interval):
    low, high = (_bound(v) for v in interval[1:-1].split(","))
    return low, interval[0] == "[", high, interval[-1] == "]"


def _inside(x, interval):
    low, low_in, high, high_in = _bounds(interval)
    return (x >= low if low_in else x > low) and (x <= high if high_in else x < high)


def _has_kind(value, kind):
    if kind is list:
        return isinstance(value, (list, tuple))
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _conform(key, value, spec, whole):
    """Raise ConfigError unless ``value`` (``whole`` or an entry of it) is what ``spec`` allows.

    Messages are built only on failure: the gate runs on every load, and a sweep of every key in the
    tests runs it thousands of times.
    """
    problem = None
    if value is None:
        if not spec.nullable:
            problem = f"must be {_describe(spec)}, not None (null in YAML)"
    elif not _has_kind(value, spec.kind):
        problem = f"must be {_describe(spec)}, not {type(value).__name__} {value!r}"
    elif isinstance(value, float) and not math.isfinite(value):
        problem = "must be a finite number (NaN and infinity cannot train)"
    elif spec.interval and not _inside(value, spec.interval):
        problem = f"must lie in {spec.interval}"
    elif spec.kind is str and not (spec.empty_ok or value):
        problem = f"must be {_describe(spec)}"
    elif spec.kind is list:
        if spec.lengths and len(value) not in spec.lengths:
            problem = f"must be {_describe(spec)}, not {len(value)} entries"
        else:
            for i, entry in enumerate(value):
                _conform(key, entry, spec.items[i if len(spec.items) > 1 else 0], whole)
    if problem:
        where = "it" if value is whole else f"its entry {value!r}"
        raise ConfigError(f"{key} is {whole!r}: {where} {problem}. Fix {key} in the YAML or on the command line.")


def _check_keys(cfg):
    """Every key against its entry of KEYS, before any check compares two keys."""
    for key, spec in KEYS.items():
        value = _get(cfg, key)
        _conform(key, value, spec, value)
    for key, options in OPTION_KEYS.items():
        value = _get(cfg, key)
        if value not in options:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, options))}, got {value!r}. Fix {key} in the YAML or on the command line.")


# ---- cross-key checks ---------------------------------------------------------------------------


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
    changes = sorted({i for i, *_ in m.POOL_Q_STRIDE} | {i for i, _ in m.DIM_MUL} | {i for i, _ in m.HEAD_MUL})
    missing = [i for i in changes if i not in m.REV.BUFFER_LAYERS]
    _check(
        not missing,
        f"Blocks {missing} change resolution or width (MVIT.POOL_Q_STRIDE / DIM_MUL / HEAD_MUL) "
        "and so cannot be reversible; list them in MVIT.REV.BUFFER_LAYERS.",
    )
    _check(not m.DIM_MUL_IN_ATT, "MVIT.DIM_MUL_IN_ATT is a non-reversible option; set it False with MVIT.REV.ENABLE.")


def _check_patches(cfg):
    """The patch embedding: its shape, and a token grid of at least one token that the crop fills exactly."""
    m, data = cfg.MVIT, cfg.DATA
    dims = 2 if m.PATCH_2D else 3
    for key in ("PATCH_KERNEL", "PATCH_STRIDE", "PATCH_PADDING"):
        _check(len(m[key]) == dims, f"MVIT.{key} needs {dims} values with MVIT.PATCH_2D {m.PATCH_2D}, got {list(m[key])}.")
    _check(
        data.TRAIN_CROP_SIZE == data.TEST_CROP_SIZE,
        f"DATA.TRAIN_CROP_SIZE ({data.TRAIN_CROP_SIZE}) and DATA.TEST_CROP_SIZE ({data.TEST_CROP_SIZE}) "
        "must be equal: the position embeddings are sized for one token grid.",
    )
    kernel, stride, padding = m.PATCH_KERNEL[-1], m.PATCH_STRIDE[-1], m.PATCH_PADDING[-1]
    crop = data.TRAIN_CROP_SIZE
    _check(
        crop >= stride and crop + 2 * padding >= kernel,
        f"DATA.TRAIN_CROP_SIZE / DATA.TEST_CROP_SIZE {crop} is smaller than one patch (MVIT.PATCH_STRIDE {stride}, "
        f"MVIT.PATCH_KERNEL {kernel} with MVIT.PATCH_PADDING {padding}): the image would have no token. "
        "Raise the crop sizes.",
    )
    _check(
        crop % stride == 0,
        f"DATA.TRAIN_CROP_SIZE {crop} is not divisible by the patch stride "
        f"{stride} (MVIT.PATCH_STRIDE); choose a crop that is a multiple of {stride}.",
    )
    if not m.PATCH_2D:
        _check(
            data.NUM_FRAMES % m.PATCH_STRIDE[0] == 0,
            f"DATA.NUM_FRAMES {data.NUM_FRAMES} is not divisible by the temporal patch stride {m.PATCH_STRIDE[0]}.",
        )


def _check_model(cfg):
    m = cfg.MVIT
    if m.REV.ENABLE:
        _check_reversible(m)
    for key in ("RESPATH_FUSE", "PRE_Q_FUSION"):
        _check(
            fusion_ok(m.REV[key]),
            f"MVIT.REV.{key} '{m.REV[key]}' is not one of {FUSIONS} or [ln+]concat_linear[_mult[_drop]] "
            "(mult > 0, 0 <= drop < 1).",
        )
    _check(
        cfg.MODEL.MODEL_NAME in MODEL_NAMES,
        f"MODEL.MODEL_NAME '{cfg.MODEL.MODEL_NAME}' is not a registered model; it must be one of {MODEL_NAMES}.",
    )
    _check(
        m.EMBED_DIM % m.NUM_HEADS == 0,
        f"MVIT.EMBED_DIM {m.EMBED_DIM} must be divisible by MVIT.NUM_HEADS {m.NUM_HEADS} (every head gets an equal share).",
    )
    for key in ("DIM_MUL", "HEAD_MUL", "POOL_Q_STRIDE", "POOL_KV_STRIDE"):
        for entry in m[key]:
            _check(0 <= entry[0] < m.DEPTH, f"MVIT.{key} entry {list(entry)} names block {entry[0]}, outside 0..{m.DEPTH - 1} (MVIT.DEPTH).")
    for i in m.REV.BUFFER_LAYERS:
        _check(0 <= i < m.DEPTH, f"MVIT.REV.BUFFER_LAYERS names block {i}, outside 0..{m.DEPTH - 1}.")
    pooled = any(len(m[key]) for key in ("POOL_Q_STRIDE", "POOL_KV_STRIDE")) or bool(m.POOL_KV_STRIDE_ADAPTIVE)
    _check(
        not (cfg.DETERMINISTIC and cfg.NUM_GPUS > 0 and m.MODE == "avg" and pooled),
        "DETERMINISTIC True with MVIT.MODE avg cannot train on CUDA: AvgPool3d's backward has no deterministic "
        "CUDA kernel, and torch refuses it. Use MVIT.MODE conv (the published models) or max, or DETERMINISTIC False.",
    )
    _check_patches(cfg)


def _check_ordered(key, pair):
    _check(
        not pair or pair[0] <= pair[1],
        f"{key} is {list(pair)}: a range [min, max] with min <= max. Swap its entries.",
    )


def _check_aa_type(cfg):
    """AUG.AA_TYPE read by timm's own parser (the one the data sets call), as the data set will read it."""
    policy = cfg.AUG.AA_TYPE
    if policy:
        problem = _policy_problem(policy, cfg.TRAIN.DATASET.lower() == "kinetics")
        if problem:
            raise ConfigError(f"AUG.AA_TYPE '{policy}' {problem}")


@functools.lru_cache(maxsize=64)
def _policy_problem(policy, video):
    """What is wrong with the timm policy string ``policy`` (None: nothing); cached, as timm builds every op to parse."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    grammar = (
        "Write it in timm's grammar: rand-m9-n2-mstd0.5-inc1 (RandAugment: rand, then -m<magnitude> -n<ops> -mstd<std> "
        "-inc<0|1> -p<prob>), original-mstd0.5 (AutoAugment), augmix-m5-w4-d2 (AugMix), or '' for none."
    )
    if video and not policy.startswith("rand"):
        return f"is not a RandAugment policy, and clips of TRAIN.DATASET kinetics take RandAugment only ('rand-...'). {grammar}"
    # timm reads each section after the name as <key><number> and skips one without a number in silence.
    silent = [part for part in policy.split("-")[1:] if not re.match(r"[a-z]+\d", part)]
    if silent:
        return f"has sections {silent} that are not <key><number>, which timm would skip without a word. {grammar}"
    parse = rand_augment_transform if policy.startswith("rand") else augment_and_mix_transform if policy.startswith("augmix") else auto_augment_transform
    try:
        transform = parse(policy, {})
    except Exception as err:  # timm's parser asserts or fails to convert: either way the string is malformed
        return f"is not a policy timm can read ({type(err).__name__}{': ' + str(err) if str(err) else ''}). {grammar}"
    ops = getattr(transform, "ops", [])  # AutoAugment's sub-policies hold their own (fixed) operations
    if getattr(transform, "num_layers", 1) < 1 or not all(0 <= op.prob <= 1 for op in ops):
        return f"asks for no operation (-n0) or a probability outside [0, 1] (-p). {grammar}"
    return None


def _check_data(cfg):
    data, test = cfg.DATA, cfg.TEST
    channels = data.INPUT_CHANNEL_NUM[0]
    _check(channels == 3, f"DATA.INPUT_CHANNEL_NUM {list(data.INPUT_CHANNEL_NUM)}: the data sets decode RGB, so the first entry must be 3.")
    for key in ("MEAN", "STD"):
        _check(
            len(data[key]) == channels,
            f"DATA.{key} {list(data[key])} has {len(data[key])} entries but DATA.INPUT_CHANNEL_NUM says {channels} channels; "
            f"give one value per channel.",
        )
    for key in ("TRAIN_JITTER_SCALES", "TRAIN_JITTER_SCALES_RELATIVE", "TRAIN_JITTER_ASPECT_RELATIVE"):
        _check_ordered(f"DATA.{key}", data[key])
    _check(test.NUM_SPATIAL_CROPS in (1, 3), f"TEST.NUM_SPATIAL_CROPS must be 1 or 3, got {test.NUM_SPATIAL_CROPS}.")
    # PySlowFast tests once per entry of TEST.NUM_TEMPORAL_CLIPS (each as NUM_ENSEMBLE_VIEWS); revvit tests once.
    _check(
        list(test.NUM_TEMPORAL_CLIPS) in ([], [test.NUM_ENSEMBLE_VIEWS]),
        f"TEST.NUM_TEMPORAL_CLIPS {list(test.NUM_TEMPORAL_CLIPS)} asks for one test run per entry, which revvit does "
        "not do; set TEST.NUM_TEMPORAL_CLIPS [] and TEST.NUM_ENSEMBLE_VIEWS to the number of clips, one run per value.",
    )
    _check_aa_type(cfg)
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
        per_process = per_process_batch_size(cfg, "train")
        _check(
            (per_process * cfg.AUG.NUM_SAMPLE) % 2 == 0,
            f"Mixup pairs each sample with another, so the per-process training batch must be even; it is "
            f"{per_process} (TRAIN.BATCH_SIZE {cfg.TRAIN.BATCH_SIZE} // NUM_GPUS {max(1, cfg.NUM_GPUS)}) x "
            f"AUG.NUM_SAMPLE {cfg.AUG.NUM_SAMPLE}. Change TRAIN.BATCH_SIZE or AUG.NUM_SAMPLE.",
        )


def _check_loading(cfg):
    """AUG.ON_DEVICE and DATA_LOADER.GPU_DECODE: the device pipeline can run what the config asks of it."""
    on_device, aug = cfg.AUG.ON_DEVICE, cfg.AUG
    _check(
        on_device is not True or not aug.ENABLE or not aug.AA_TYPE or aug.AA_TYPE.startswith("rand"),
        f"AUG.ON_DEVICE True runs RandAugment policies ('rand-...') on the device; AUG.AA_TYPE '{aug.AA_TYPE}' is "
        "another kind. Set AUG.ON_DEVICE False (or None, which keeps it in the workers).",
    )
    if cfg.DATA_LOADER.GPU_DECODE:
        _check(on_device is not False, "DATA_LOADER.GPU_DECODE decodes on the training device, which needs the device pipeline; set AUG.ON_DEVICE None or True.")
        _check(
            cfg.TRAIN.DATASET == "imagenet" and cfg.AUG.NUM_SAMPLE == 1 and not (cfg.AUG.ENABLE and not cfg.AUG.AA_TYPE),
            "DATA_LOADER.GPU_DECODE decodes training JPEGs of TRAIN.DATASET imagenet, one crop each (AUG.NUM_SAMPLE 1), "
            "with RandAugment rather than colour jitter (AUG.AA_TYPE set); set DATA_LOADER.GPU_DECODE False otherwise.",
        )


def _check_solver(cfg):
    s = cfg.SOLVER
    _check(s.LAYER_DECAY == 1.0, f"SOLVER.LAYER_DECAY {s.LAYER_DECAY} is not supported by revvit; set it to 1.0.")
    if s.OPTIMIZING_METHOD == "sgd" and s.NESTEROV:
        _check(
            s.MOMENTUM > 0 and s.DAMPENING == 0,
            f"SOLVER.NESTEROV True needs SOLVER.MOMENTUM > 0 and SOLVER.DAMPENING 0 (torch's SGD refuses otherwise); "
            f"they are {s.MOMENTUM} and {s.DAMPENING}. Set SOLVER.NESTEROV False or fix them.",
        )
    if s.LR_POLICY == "steps_with_relative_lrs":
        _check(len(s.STEPS) == len(s.LRS) and len(s.STEPS) > 0, "SOLVER.STEPS and SOLVER.LRS must be non-empty and of equal length for steps_with_relative_lrs.")
        _check(
            all(a < b for a, b in zip(s.STEPS, s.STEPS[1:])),
            f"SOLVER.STEPS {list(s.STEPS)} must increase: each entry is the epoch where the next rate of SOLVER.LRS starts.",
        )
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
    _check(0 <= cfg.SHARD_ID < cfg.NUM_SHARDS, f"SHARD_ID {cfg.SHARD_ID} must be in 0..NUM_SHARDS-1 ({cfg.NUM_SHARDS - 1}).")
    _check(
        not (cfg.MODEL.FSDP and cfg.MODEL.FP16_ALLREDUCE),
        "MODEL.FP16_ALLREDUCE is a DDP gradient hook; with MODEL.FSDP True gradients are reduce-scattered in float32 "
        "(or in the TRAIN.MIXED_PRECISION policy): set MODEL.FP16_ALLREDUCE False.",
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
    """Raise ConfigError on the first key or combination in ``cfg`` that cannot work; ``cfg`` is not changed."""
    _check_keys(cfg)  # first: every later check compares and divides values of the right type and range
    _check_dataset_names(cfg)
    _check_processes(cfg)  # before the mixup check, which divides the batch by the processes
    _check_not_implemented(cfg)
    _check_model(cfg)
    _check_data(cfg)
    _check_solver(cfg)
    _check_checkpoints(cfg)
    return cfg
