"""The config gate: every cross-key check and refusal in one place, with the fix named."""

import argparse
import os
import re

import pytest
import yaml

from helpers import OFFICIAL_CONFIGS, REPO, make_cfg
from revvit.config import ConfigError, get_cfg, load_config
from revvit.config import options
from revvit.config import validate as gate

KINETICS = os.path.join(REPO, "configs", "Kinetics", "REV_MVIT_B_16x4_CONV.yaml")
IMAGENET = os.path.join(REPO, "configs", "ImageNet", "REV_VIT_B.yaml")


def _load(path, opts=()):
    return load_config(argparse.Namespace(cfg_file=path, opts=list(opts)))


def test_readme_commands_load_and_validate_on_one_machine():
    # python tools/run_net.py --cfg <config> DATA.PATH_TO_DATA_DIR path_to_your_dataset NUM_GPUS 1
    for path in (KINETICS, IMAGENET):
        cfg = _load(path, ["DATA.PATH_TO_DATA_DIR", "path_to_your_dataset", "NUM_GPUS", "1"])
        assert (cfg.NUM_GPUS, cfg.NUM_SHARDS, cfg.SHARD_ID) == (1, 1, 0)
        gate.check_launch(cfg, init_method=None)  # one machine needs no meeting point


def test_official_kinetics_file_still_merges_and_asks_for_a_meeting_point(reference_dir):
    official = os.path.join(OFFICIAL_CONFIGS, "Kinetics", "REV_MVIT_B_16x4_CONV.yaml")
    cfg = _load(official, ["MVIT.CLS_EMBED_ON", "False", "NUM_GPUS", "1"])
    assert cfg.NUM_SHARDS == 16
    with pytest.raises(ConfigError) as err:
        gate.check_launch(cfg, init_method=None)
    message = str(err.value)
    assert "NUM_SHARDS 16" in message
    assert "On one machine: add 'NUM_SHARDS 1'" in message
    assert "SHARD_ID <0..NUM_SHARDS-1>" in message and "--init_method tcp://<host of shard 0>:<free port>" in message
    gate.check_launch(cfg, init_method="tcp://10.0.0.1:23456")
    gate.check_launch(cfg, init_method=None, external_launcher="torchrun")  # torchrun's env:// is the meeting point


def test_kinetics_config_documents_the_published_run():
    with open(KINETICS) as f:
        text = f.read()
    cfg = make_cfg(KINETICS)
    # 16 clips per machine x 16 machines = the published global batch of 256 clips.
    assert cfg.TRAIN.BATCH_SIZE * 16 == 256
    assert "NUM_SHARDS 16 SHARD_ID <0..15> --init_method tcp://" in text and "16 x 16 = 256 clips" in text


@pytest.mark.parametrize(
    "opts,match",
    [
        # Moved here from models/mvit.py, engine/train.py, solver/*, datasets/*.
        (["MVIT.REL_POS_SPATIAL", "True"], r"^MVIT.REL_POS_SPATIAL True: not implemented in revvit.*set it False"),
        (["MVIT.REL_POS_ZERO_INIT", "True"], "MVIT.REL_POS_ZERO_INIT True: not implemented"),
        (["MVIT.USE_FIXED_SINCOS_POS", "True"], "MVIT.USE_FIXED_SINCOS_POS True: not implemented"),
        (["MVIT.POOL_FIRST", "True"], "MVIT.POOL_FIRST True: not implemented"),
        (["DATA.MULTI_LABEL", "True"], "DATA.MULTI_LABEL True: not implemented"),
        (["TRAIN.CHECKPOINT_INFLATE", "True"], "TRAIN.CHECKPOINT_INFLATE True: not implemented"),
        (["TRAIN.CHECKPOINT_IN_INIT", "True"], "TRAIN.CHECKPOINT_IN_INIT True: not implemented"),
        (["TEST.CHECKPOINT_TYPE", "caffe2"], "TEST.CHECKPOINT_TYPE 'caffe2' is not supported.*Set it to pytorch"),
        (["SOLVER.LAYER_DECAY", "0.75"], r"SOLVER.LAYER_DECAY 0.75 is not supported by revvit; set it to 1.0"),
        (["SOLVER.COSINE_END_LR", "0.01"], r"SOLVER.COSINE_END_LR \(0.01\) must not exceed SOLVER.BASE_LR \(0.0001\)"),
        (["SOLVER.WARMUP_EPOCHS", "200.0"], r"SOLVER.WARMUP_EPOCHS \(200.0\) must be shorter than SOLVER.MAX_EPOCH \(200\)"),
        (["SOLVER.LR_POLICY", "steps_with_decay"], "SOLVER.LR_POLICY must be one of"),
        (["MODEL.LOSS_FUNC", "focal"], "MODEL.LOSS_FUNC must be one of"),
        (["AUG.RE_SPLIT", "True"], "AUG.RE_SPLIT True needs AugMix"),
        (["DATA.DECODING_BACKEND", "decord"], "DATA.DECODING_BACKEND must be one of"),
        (["DATA.TRAIN_JITTER_SCALES", "[200, 320]"], r"DATA.TRAIN_JITTER_SCALES\[0\] \(200\).*DATA.TEST_CROP_SIZE \(224\)"),
        (["MIXUP.ALPHA", "0.0", "MIXUP.CUTMIX_ALPHA", "0.0"], "MIXUP.ALPHA and MIXUP.CUTMIX_ALPHA are both 0"),
        (["TRAIN.BATCH_SIZE", "3", "AUG.NUM_SAMPLE", "1"], r"even; it is 3 \(TRAIN.BATCH_SIZE 3 // NUM_GPUS 1\) x AUG.NUM_SAMPLE 1"),
        # Keys revvit does not read, whose PySlowFast meaning would change the run.
        (["TEST.NUM_TEMPORAL_CLIPS", "[3, 5]"], r"TEST.NUM_TEMPORAL_CLIPS \[3, 5\] asks for one test run per entry"),
        (["NUM_SHARDS", "2", "SHARD_ID", "2"], r"SHARD_ID 2 must be in 0..NUM_SHARDS-1 \(1\)"),
        (["TRAIN.MIXED_PRECISION_DTYPE", "fp16"], "TRAIN.MIXED_PRECISION_DTYPE 'fp16' is not one of auto, bfloat16, float16"),
        # Moved here from models/__init__.py build_model and models/attention.py.
        (["MODEL.MODEL_NAME", "SlowFast"], r"MODEL.MODEL_NAME 'SlowFast' is not a registered model.*\('MViT',\)"),
        (["MVIT.NUM_HEADS", "5"], r"MVIT.EMBED_DIM 96 must be divisible by MVIT.NUM_HEADS 5"),
    ],
)
def test_every_refusal_names_the_key_and_the_fix(opts, match):
    with pytest.raises(ConfigError, match=match):
        _load(KINETICS, ["NUM_GPUS", "1", *opts])


def test_unread_keys_at_values_that_change_nothing_are_accepted():
    cfg = _load(
        KINETICS,
        ["NUM_GPUS", "1", "MODEL.ARCH", "slow", "TEST.NUM_TEMPORAL_CLIPS", "[5]", "DATA.DECODING_SHORT_SIZE", "320",
         "SOLVER.GAMMA", "0.5", "SOLVER.STEP_SIZE", "3", "SOLVER.WARMUP_FACTOR", "0.01"],
    )
    assert cfg.TEST.NUM_TEMPORAL_CLIPS == [cfg.TEST.NUM_ENSEMBLE_VIEWS] == [5]


def test_unread_keys_are_marked_in_defaults():
    with open(os.path.join(REPO, "revvit", "config", "defaults.py")) as f:
        lines = {line.split(" = ")[0][3:]: line for line in f if line.startswith("_C.")}
    for key in ("TEST.NUM_TEMPORAL_CLIPS", "MODEL.ARCH", "MVIT.REL_POS_ZERO_INIT", "DATA.DECODING_SHORT_SIZE",
                "SOLVER.GAMMA", "SOLVER.STEP_SIZE", "SOLVER.WARMUP_FACTOR"):
        assert "accepted for PySlowFast YAML files" in lines[key] and "not read" in lines[key], key


def test_option_tables_are_the_names_the_implementations_dispatch_on():
    from revvit.engine.losses import _LOSSES
    from revvit.models import MODEL_REGISTRY
    from revvit.models.attention import _FIXED_POOLS
    from revvit.models.blocks import TwoStreamFusion
    from revvit.models.head import TransformerBasicHead
    from revvit.solver.lr_policy import _POLICIES
    from revvit.solver.optimizer import _OPTIMIZERS

    assert {name for name, _ in MODEL_REGISTRY} == set(options.MODEL_NAMES)
    assert set(_LOSSES) == set(options.LOSS_FUNCS)
    assert set(_POLICIES) == set(options.LR_POLICIES)
    assert set(_OPTIMIZERS) == set(options.OPTIMIZERS)
    assert set(TwoStreamFusion._REDUCTIONS) | {"concat"} == set(options.FUSIONS)
    assert set(TransformerBasicHead._ACTS) == set(options.HEAD_ACTS)
    assert set(_FIXED_POOLS) | {"conv"} == set(options.POOL_MODES)


@pytest.mark.parametrize("method", options.OPTIMIZERS)
def test_every_accepted_optimizer_builds(method):
    import torch

    from revvit.solver import build_optimizer

    cfg = get_cfg()
    cfg.SOLVER.OPTIMIZING_METHOD = method
    assert method in options.OPTIMIZERS
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg)
    assert type(opt).__name__.lower() == method


def test_fusion_modes_the_gate_accepts_are_the_ones_the_model_builds():
    import torch

    from revvit.models.blocks import TwoStreamFusion

    for mode in (*options.FUSIONS, "concat_linear", "ln+concat_linear_2.0", "concat_linear_1.0_0.1"):
        assert options.fusion_ok(mode)
        TwoStreamFusion(mode, 8)
    assert options.parse_fusion("ln+concat_linear_2.0_0.1") == options.FusionSpec("concat_linear", True, 2.0, 0.1)
    fused = TwoStreamFusion("ln+concat_linear_2.0_0.1", 8).fuse_fn
    assert isinstance(fused[0], torch.nn.LayerNorm) and fused[1].fc1.out_features == 16 and fused[1].drop1.p == 0.1
    for mode in ("sum", "concat_linear_1_2_3", "linear", "concat_linear_x"):
        assert not options.fusion_ok(mode)
        with pytest.raises(ValueError):
            TwoStreamFusion(mode, 8)


def _outside(interval, default):
    """A value outside ``interval`` ("[0, 1)"), of the key's type: below the lower end, or at an open one."""
    low = float(interval[1:-1].split(",")[0])
    bad = low if interval[0] == "(" else low - 1
    sample = default[0] if isinstance(default, (list, tuple)) and default else default
    bad = int(bad) if isinstance(sample, int) and not isinstance(sample, bool) else bad
    return str([bad]) if isinstance(default, (list, tuple)) else str(bad)


@pytest.mark.parametrize("key", sorted(gate.NUMERIC_RANGES))
def test_every_numeric_key_outside_its_range_is_refused_by_name(key):
    node = get_cfg()
    for part in key.split("."):
        node = node[part]
    value = _outside(gate.NUMERIC_RANGES[key], node)
    with pytest.raises(ConfigError, match=rf"^{key} is .*must lie in {re.escape(gate.NUMERIC_RANGES[key])}"):
        _load(IMAGENET, ["NUM_GPUS", "1", key, value])


def _float_keys(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _float_keys(v, f"{prefix}{k}.")
        elif isinstance(v, float) or (isinstance(v, (list, tuple)) and v and isinstance(v[0], float)):
            yield prefix + k, v


@pytest.mark.parametrize("key, default", sorted(_float_keys(get_cfg())))
def test_a_nan_anywhere_is_blamed_on_its_own_key(key, default, tmp_path):
    """YAML's .nan fails every comparison, so a later check would otherwise blame another key."""
    doc = [float("nan")] if isinstance(default, (list, tuple)) else float("nan")
    for part in reversed(key.split(".")):
        doc = {part: doc}
    path = tmp_path / "nan.yaml"
    path.write_text(f"_BASE_: {IMAGENET}\n" + yaml.safe_dump(doc))  # written as YAML's .nan
    with pytest.raises(ConfigError, match=rf"^{key} is .*nan.*: it must be a finite number"):
        _load(str(path), ["NUM_GPUS", "1"])


def test_weight_decay_below_zero_is_refused():
    with pytest.raises(ConfigError, match=r"^SOLVER.WEIGHT_DECAY is -5.0: it must lie in \[0, inf\)"):
        _load(IMAGENET, ["NUM_GPUS", "1", "SOLVER.WEIGHT_DECAY", "-5"])


@pytest.mark.parametrize("section", ["TRAIN", "TEST"])
def test_an_unknown_data_set_name_lists_the_names(section):
    with pytest.raises(ConfigError, match=rf"^{section}.DATASET 'imagenet21k' is not a data set revvit reads; known: imagenet, kinetics"):
        _load(IMAGENET, ["NUM_GPUS", "1", f"{section}.DATASET", "imagenet21k"])


def test_the_data_set_names_are_the_registry_s():
    from revvit.datasets import DATASET_REGISTRY

    assert {name.lower() for name, _ in DATASET_REGISTRY} == set(options.DATASETS)


def test_every_range_names_a_key_of_the_defaults():
    cfg = get_cfg()
    for key in gate.NUMERIC_RANGES:
        node = cfg
        for part in key.split("."):
            assert part in node, key
            node = node[part]
def test_the_options_listed_in_defaults_comments_are_the_tables():
    tables = {
        "MODEL.LOSS_FUNC": options.LOSS_FUNCS, "MVIT.MODE": options.POOL_MODES, "MVIT.REV.RES_PATH": options.RES_PATHS,
        "MVIT.REV.DROP_PATH_MODE": options.DROP_PATH_MODES, "DATA.ENSEMBLE_METHOD": options.ENSEMBLE_METHODS,
        "SOLVER.LR_POLICY": options.LR_POLICIES, "SOLVER.OPTIMIZING_METHOD": options.OPTIMIZERS,
    }
    with open(os.path.join(REPO, "revvit", "config", "defaults.py")) as f:
        comments = {line.split(" = ")[0][3:]: line.split("#", 1)[1] for line in f if line.startswith("_C.") and "#" in line}
    for key, table in tables.items():
        pieces = [re.sub(r"\(.*?\)", "", piece).split() for piece in comments[key].split(" | ")]
        listed = [pieces[0][-1]] + [words[0] for words in pieces[1:]]  # "what: a (note) | b (note) | c"
        assert listed == list(table), key


def test_keys_revvit_adds_are_marked_in_defaults():
    with open(os.path.join(REPO, "revvit", "config", "defaults.py")) as f:
        lines = {line.split(" = ")[0][3:]: line for line in f if line.startswith("_C.")}
    ours = ("MODEL.FSDP", "MODEL.PRETRAINED", "MVIT.REV.DROP_PATH_MODE", "LOG_ITER_STATS_STDOUT", "AUG.ON_DEVICE",
            "TRAIN.MIXED_PRECISION_DTYPE", "TRAIN.STOP_GRACE_PERIOD", "DATA.DEMO", "DATA.DEMO_CACHE_DIR",
            "DATA_LOADER.NUM_RETRIES", "DATA_LOADER.PREFETCH_FACTOR", "DATA_LOADER.GPU_DECODE", "DATA_LOADER.TIMEOUT",
            "DETERMINISTIC", "DIST_TIMEOUT")
    for key in ours:
        assert "# (revvit)" in lines[key], key
