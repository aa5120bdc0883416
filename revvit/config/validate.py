"""Checks of impossible combinations, run once when a config is loaded.

Each check fails with the keys involved and the fix, before any model or data is built: a wrong
combination found an hour into a multi-node job costs far more than a strict check at start.
"""


class ConfigError(ValueError):
    """A config that cannot work; the message names the keys and what to change."""


_LOSSES = ("cross_entropy", "soft_cross_entropy", "bce", "bce_logit")
_OPTIMIZERS = ("sgd", "adam", "adamw")
_LR_POLICIES = ("cosine", "steps_with_relative_lrs", "constant")
_BACKENDS = ("pyav", "torchvision")
_FUSIONS = ("add", "max", "min", "avg", "concat")
_DROP_PATH_MODES = ("block", "branch")


def _check(condition, message):
    if not condition:
        raise ConfigError(message)


def _fusion_ok(mode):
    if mode in _FUSIONS:
        return True
    body = mode[3:] if mode.startswith("ln+") else mode
    parts = body.split("_")
    return parts[:2] == ["concat", "linear"] and len(parts) <= 4


def _check_model(cfg):
    m = cfg.MVIT
    if m.REV.ENABLE:
        _check(
            not m.CLS_EMBED_ON,
            "MVIT.REV.ENABLE True needs MVIT.CLS_EMBED_ON False: a reversible encoder has no class "
            "token (the published reversible checkpoints have none). Add 'MVIT.CLS_EMBED_ON False' "
            "to the YAML or the command line.",
        )
        for key in ("RESPATH_FUSE", "PRE_Q_FUSION"):
            _check(_fusion_ok(m.REV[key]), f"MVIT.REV.{key} '{m.REV[key]}' is not one of {_FUSIONS} or concat_linear[_mult[_drop]].")
        _check(m.REV.RES_PATH in ("conv", "max"), f"MVIT.REV.RES_PATH must be conv or max, got '{m.REV.RES_PATH}'.")
        _check(
            m.REV.DROP_PATH_MODE in _DROP_PATH_MODES,
            f"MVIT.REV.DROP_PATH_MODE must be one of {_DROP_PATH_MODES}, got '{m.REV.DROP_PATH_MODE}'.",
        )
        changes = sorted({i for i, *_ in m.POOL_Q_STRIDE} | {i for i, _ in m.DIM_MUL} | {i for i, _ in m.HEAD_MUL})
        missing = [i for i in changes if i not in m.REV.BUFFER_LAYERS]
        _check(
            not missing,
            f"Blocks {missing} change resolution or width (MVIT.POOL_Q_STRIDE / DIM_MUL / HEAD_MUL) "
            "and so cannot be reversible; list them in MVIT.REV.BUFFER_LAYERS.",
        )
        _check(not m.POOL_FIRST, "MVIT.POOL_FIRST is not supported with MVIT.REV.ENABLE.")
        _check(not m.DIM_MUL_IN_ATT, "MVIT.DIM_MUL_IN_ATT is a non-reversible option; set it False with MVIT.REV.ENABLE.")
    _check(m.NORM == "layernorm", f"MVIT.NORM must be layernorm, got '{m.NORM}'.")
    _check(m.MODE in ("conv", "avg", "max"), f"MVIT.MODE must be conv, avg or max, got '{m.MODE}'.")
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
    _check(cfg.MODEL.HEAD_ACT in ("softmax", "sigmoid", "none"), f"MODEL.HEAD_ACT must be softmax, sigmoid or none, got '{cfg.MODEL.HEAD_ACT}'.")
    _check(cfg.MODEL.LOSS_FUNC in _LOSSES, f"MODEL.LOSS_FUNC must be one of {_LOSSES}, got '{cfg.MODEL.LOSS_FUNC}'.")


def _check_solver_and_launch(cfg):
    s = cfg.SOLVER
    _check(s.OPTIMIZING_METHOD in _OPTIMIZERS, f"SOLVER.OPTIMIZING_METHOD must be one of {_OPTIMIZERS}, got '{s.OPTIMIZING_METHOD}'.")
    _check(s.LR_POLICY in _LR_POLICIES, f"SOLVER.LR_POLICY must be one of {_LR_POLICIES}, got '{s.LR_POLICY}'.")
    _check(s.MAX_EPOCH >= 1, "SOLVER.MAX_EPOCH must be at least 1.")
    if s.LR_POLICY == "steps_with_relative_lrs":
        _check(len(s.STEPS) == len(s.LRS) and len(s.STEPS) > 0, "SOLVER.STEPS and SOLVER.LRS must be non-empty and of equal length for steps_with_relative_lrs.")
    _check(cfg.NUM_GPUS >= 0 and cfg.NUM_SHARDS >= 1, "NUM_GPUS must be >= 0 and NUM_SHARDS >= 1.")
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
    _check(cfg.DATA.DECODING_BACKEND in _BACKENDS, f"DATA.DECODING_BACKEND must be one of {_BACKENDS}, got '{cfg.DATA.DECODING_BACKEND}'.")
    _check(cfg.DATA.ENSEMBLE_METHOD in ("sum", "max"), f"DATA.ENSEMBLE_METHOD must be sum or max, got '{cfg.DATA.ENSEMBLE_METHOD}'.")
    _check(cfg.TEST.NUM_SPATIAL_CROPS in (1, 3), f"TEST.NUM_SPATIAL_CROPS must be 1 or 3, got {cfg.TEST.NUM_SPATIAL_CROPS}.")


def validate_cfg(cfg):
    """Raise ConfigError on the first impossible combination in ``cfg``."""
    _check_model(cfg)
    _check_solver_and_launch(cfg)
    return cfg
