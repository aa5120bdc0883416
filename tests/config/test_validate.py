"""The config gate: every cross-key check and refusal in one place, with the fix named."""

import argparse
import os
import re

import pytest
import yaml

from helpers import OFFICIAL_CONFIGS, REPO, make_cfg
from revvit.config import ConfigError, get_cfg, load_config, merge_opts, validate_cfg
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
        (["TRAIN.MIXED_PRECISION_DTYPE", "fp16"], "TRAIN.MIXED_PRECISION_DTYPE must be one of 'auto', 'bfloat16', 'float16', got 'fp16'"),
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
    from revvit.datasets import DATASET_REGISTRY, demo
    from revvit.engine.losses import _LOSSES
    from revvit.models import MODEL_REGISTRY
    from revvit.models.attention import _FIXED_POOLS
    from revvit.models.blocks import TwoStreamFusion
    from revvit.engine import evaluate
    from revvit.solver.lr_policy import _POLICIES
    from revvit.solver.optimizer import _OPTIMIZERS

    assert {name for name, _ in MODEL_REGISTRY} == set(options.MODEL_NAMES)
    assert set(_LOSSES) == set(options.LOSS_FUNCS)
    assert set(_POLICIES) == set(options.LR_POLICIES)
    assert set(_OPTIMIZERS) == set(options.OPTIMIZERS)
    assert set(TwoStreamFusion._REDUCTIONS) | {"concat"} == set(options.FUSIONS)
    assert set(evaluate._HEAD_ACTS) == set(options.HEAD_ACTS)
    assert set(_FIXED_POOLS) | {"conv"} == set(options.POOL_MODES)
    assert {name.lower() for name, _ in DATASET_REGISTRY} == set(options.DATASETS)
    assert set(demo.DEMO_SETS) | {""} == set(options.DEMO_SETS)


def test_the_implementations_read_the_tables_from_options_not_from_the_gate():
    for path in ("revvit/models/blocks.py", "revvit/datasets/kinetics.py"):
        with open(os.path.join(REPO, path)) as f:
            text = f.read()
        assert "revvit.config.validate" not in text and "from revvit.config.options import" in text, path


# One step of each optimizer on a single weight w = 1 with gradient 1, lr 0.1, weight decay 0.5,
# SOLVER.MOMENTUM 0.9 (Nesterov, no dampening) and SOLVER.BETAS (0.9, 0.999), worked by hand:
#   sgd:   g = 1 + 0.5 * 1 = 1.5; buffer = g; step = g + 0.9 * buffer = 2.85; w = 1 - 0.1 * 2.85 = 0.715
#   adam:  g = 1.5 (L2 in the gradient); m_hat / sqrt(v_hat) = 1.5 / 1.5 = 1; w = 1 - 0.1 = 0.9
#   adamw: w = 1 * (1 - 0.1 * 0.5) = 0.95 (decoupled decay); then m_hat / sqrt(v_hat) = 1; w = 0.85
# eps (1e-8) moves Adam's step by 1e-9. float32 rounding over these few O(1) operations stays within a
# few ulp (ulp(1) = 1.2e-7), so 1e-6 separates the three rules (0.065 apart at least) with room to spare.
EXPECTED_STEP = {"sgd": ("SGD", 0.715), "adam": ("Adam", 0.9), "adamw": ("AdamW", 0.85)}


@pytest.mark.parametrize("method", sorted(EXPECTED_STEP))
def test_every_accepted_optimizer_takes_its_own_step(method):
    import torch

    from revvit.solver import build_optimizer

    cfg = _load(IMAGENET, ["NUM_GPUS", "1", "SOLVER.OPTIMIZING_METHOD", method, "SOLVER.BASE_LR", "0.1",
                           "SOLVER.COSINE_END_LR", "0.0", "SOLVER.WEIGHT_DECAY", "0.5", "SOLVER.MOMENTUM", "0.9",
                           "SOLVER.DAMPENING", "0.0", "SOLVER.NESTEROV", "True", "SOLVER.BETAS", "[0.9, 0.999]"])
    layer = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.ones_(layer.weight)
    opt = build_optimizer(layer, cfg)
    layer.weight.grad = torch.ones_like(layer.weight)
    opt.step()
    name, expected = EXPECTED_STEP[method]
    assert type(opt).__name__ == name
    assert abs(layer.weight.item() - expected) < 1e-6


def test_the_accepted_optimizers_are_the_ones_with_a_known_step():
    assert set(EXPECTED_STEP) == set(options.OPTIMIZERS)  # a new name needs its worked step above
    with pytest.raises(ConfigError, match=r"SOLVER.OPTIMIZING_METHOD must be one of 'sgd', 'adam', 'adamw', got 'lamb'"):
        _load(IMAGENET, ["NUM_GPUS", "1", "SOLVER.OPTIMIZING_METHOD", "lamb"])


def test_fusion_modes_the_gate_accepts_are_the_ones_the_model_builds():
    import torch

    from revvit.models.blocks import TwoStreamFusion

    for mode in (*options.FUSIONS, "concat_linear", "ln+concat_linear_2.0", "concat_linear_1.0_0.1"):
        assert options.fusion_ok(mode)
        TwoStreamFusion(mode, 8)
    assert options.parse_fusion("ln+concat_linear_2.0_0.1") == options.FusionSpec("concat_linear", True, 2.0, 0.1)
    fused = TwoStreamFusion("ln+concat_linear_2.0_0.1", 8).fuse_fn
    assert isinstance(fused[0], torch.nn.LayerNorm) and fused[1].fc1.out_features == 16 and fused[1].drop1.p == 0.1
    # Malformed, or numbers no MLP can have: a width ratio <= 0 or not finite, a dropout of 1 or more.
    for mode in ("sum", "concat_linear_1_2_3", "linear", "concat_linear_x", "concat_linear_-1", "concat_linear_0",
                 "concat_linear_nan", "concat_linear_inf", "concat_linear_1_1", "concat_linear_1_-0.1", 3, None):
        assert not options.fusion_ok(mode)
        with pytest.raises(ValueError):
            TwoStreamFusion(mode, 8)
    with pytest.raises(ConfigError, match=r"MVIT.REV.PRE_Q_FUSION 'concat_linear_-1' is not one of"):
        _load(IMAGENET, ["NUM_GPUS", "1", "MVIT.REV.PRE_Q_FUSION", "concat_linear_-1"])


def _numeric_keys():
    return sorted(key for key, spec in gate.KEYS.items() if spec.interval or (spec.items and spec.items[0].interval))


def _outside(spec):
    """A value outside ``spec``'s interval, of the key's type: below the lower end, or at an open one."""
    inner = spec if spec.interval else spec.items[0]
    low = gate._bounds(inner.interval)[0]
    bad = low if inner.interval[0] == "(" else low - 1
    bad = int(bad) if inner.kind is int else float(bad)
    if spec.kind is list:
        length = spec.lengths[-1] if spec.lengths else 1
        row = [bad] * length if len(spec.items) == 1 else None
        return str(row if row is not None else [[bad] * len(spec.items)])
    return str(bad)


@pytest.mark.parametrize("key", [k for k in _numeric_keys() if gate.KEYS[k].kind is not list or len(gate.KEYS[k].items) == 1])
def test_every_numeric_key_outside_its_range_is_refused_by_name(key):
    spec = gate.KEYS[key]
    inner = spec if spec.interval else spec.items[0]
    value = _outside(spec)
    with pytest.raises(ConfigError, match=rf"^{key} is .*must lie in {re.escape(inner.interval)}"):
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
    doc = [float("nan")] * len(default) if isinstance(default, (list, tuple)) else float("nan")
    for part in reversed(key.split(".")):
        doc = {part: doc}
    path = tmp_path / "nan.yaml"
    path.write_text(f"_BASE_: {IMAGENET}\n" + yaml.safe_dump(doc))  # written as YAML's .nan
    with pytest.raises(ConfigError, match=rf"^{key} is .*nan.*: (it|its entry nan) must be a finite number"):
        _load(str(path), ["NUM_GPUS", "1"])


def test_weight_decay_below_zero_is_refused():
    with pytest.raises(ConfigError, match=r"^SOLVER.WEIGHT_DECAY is -5.0: it must lie in \[0, inf\)"):
        _load(IMAGENET, ["NUM_GPUS", "1", "SOLVER.WEIGHT_DECAY", "-5"])


@pytest.mark.parametrize("section", ["TRAIN", "TEST"])
def test_an_unknown_data_set_name_lists_the_names(section):
    with pytest.raises(ConfigError, match=rf"^{section}.DATASET 'imagenet21k' is not a data set revvit reads; known: imagenet, kinetics"):
        _load(IMAGENET, ["NUM_GPUS", "1", f"{section}.DATASET", "imagenet21k"])


def _leaves(node, prefix=""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key


def test_every_key_of_the_defaults_has_a_type_and_range_and_no_other():
    assert sorted(_leaves(get_cfg())) == sorted(gate.KEYS)
    for key, options_ in gate.OPTION_KEYS.items():
        assert gate.KEYS[key].kind is str, key


def test_the_options_listed_in_defaults_comments_are_the_tables():
    tables = {
        "MODEL.LOSS_FUNC": options.LOSS_FUNCS, "MVIT.MODE": options.POOL_MODES, "MVIT.REV.RES_PATH": options.RES_PATHS,
        "MVIT.REV.DROP_PATH_MODE": options.DROP_PATH_MODES, "DATA.ENSEMBLE_METHOD": options.ENSEMBLE_METHODS,
        "SOLVER.LR_POLICY": options.LR_POLICIES, "SOLVER.OPTIMIZING_METHOD": options.OPTIMIZERS,
    }
    with open(os.path.join(REPO, "revvit", "config", "defaults.py")) as f:
        comments = {line.split(" = ")[0][3:]: line.split("#", 1)[1] for line in f if line.startswith("_C.") and "#" in line}
    for key, table in tables.items():
        text = comments[key].replace("(revvit)", "")
        pieces = [re.sub(r"\(.*?\)", "", piece).split() for piece in text.split(" | ")]
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


# ---- the sweep: whatever a key holds, the gate answers with ConfigError or accepts ----------------

BAD_VALUES = [0, -1, 1, 2.5, float("nan"), float("inf"), -float("inf"), 10**30, 1e30, 10**400, None, "word", "", True,
              [], [1], [1, 2, 3, 4, 5], [[1]], [None], ["a", "b"], [float("nan"), 1.0], {"A": 1}]


def _set(cfg, key, value):
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    old, node[leaf] = node[leaf], value
    return old


@pytest.mark.parametrize("path", [IMAGENET, KINETICS, os.path.join(REPO, "configs", "Demo", "REV_MVIT_MOVING_DIGITS.yaml")])
def test_the_gate_raises_nothing_but_config_error_whatever_any_key_holds(path):
    """Every key of the defaults, set (as Python code may set it, past the merge's type checks) to values
    of every wrong kind: the gate refuses with ConfigError or accepts, and what it accepts is of the
    key's type: None only where the key gives None a meaning, a word only for a string key, no NaN."""
    cfg = _load(path, ["NUM_GPUS", "1"])
    cfg.defrost()
    before = cfg.clone()
    accepted = []
    for key, spec in gate.KEYS.items():
        for value in BAD_VALUES:
            old = _set(cfg, key, value)
            try:
                validate_cfg(cfg)
                accepted.append((key, value))
            except ConfigError as err:
                assert "\n" not in str(err), (key, value, str(err))  # one paragraph
            finally:
                _set(cfg, key, old)
    assert cfg == before  # the gate changes nothing
    for key, value in accepted:
        spec = gate.KEYS[key]
        assert value is not None or spec.nullable, (key, value)
        assert not isinstance(value, str) or spec.kind is str, (key, value)
        assert not (isinstance(value, float) and value != value), (key, value)
        assert not isinstance(value, dict), (key, value)


def test_the_gate_raises_nothing_but_config_error_from_the_command_line():
    """The same through merge_opts, with the strings a command line holds."""
    base = _load(KINETICS, ["NUM_GPUS", "1"])
    base.defrost()
    for key in gate.KEYS:
        for raw in ("0", "-1", "nan", "1e400", "None", "word", "[1]", "[[1, 2]]", "(1, 2, 3)", "True", "{'A': 1}"):
            cfg = base.clone()
            try:
                validate_cfg(merge_opts(cfg, [key, raw]))
            except ConfigError:
                pass


# ---- the keys a user gets wrong most: refused, and by name ------------------------------------------


@pytest.mark.parametrize(
    "path, opts, match",
    [
        (KINETICS, ["DATA.NUM_FRAMES", "0"], r"^DATA.NUM_FRAMES is 0: it must lie in \[1, inf\)"),
        (KINETICS, ["DATA.SAMPLING_RATE", "0"], r"^DATA.SAMPLING_RATE is 0: it must lie in \[1, inf\)"),
        (KINETICS, ["DATA.SAMPLING_RATE", "-4"], r"^DATA.SAMPLING_RATE is -4: it must lie in \[1, inf\)"),
        (KINETICS, ["AUG.NUM_SAMPLE", "0"], r"^AUG.NUM_SAMPLE is 0"),
        (KINETICS, ["TEST.NUM_ENSEMBLE_VIEWS", "0"], r"^TEST.NUM_ENSEMBLE_VIEWS is 0: it must lie in \[1, inf\)"),
        (KINETICS, ["TEST.NUM_SPATIAL_CROPS", "0"], r"^TEST.NUM_SPATIAL_CROPS is 0: it must lie in \[1, inf\)"),
        (KINETICS, ["TEST.NUM_SPATIAL_CROPS", "2"], r"^TEST.NUM_SPATIAL_CROPS must be 1 or 3, got 2"),
        (KINETICS, ["MVIT.NUM_HEADS", "0"], r"^MVIT.NUM_HEADS is 0: it must lie in \[1, inf\)"),
        (KINETICS, ["MVIT.EMBED_DIM", "0"], r"^MVIT.EMBED_DIM is 0: it must lie in \[1, inf\)"),
        (KINETICS, ["MVIT.EMBED_DIM", "96", "MVIT.NUM_HEADS", "7"], r"MVIT.EMBED_DIM 96 must be divisible by MVIT.NUM_HEADS 7"),
        (KINETICS, ["MVIT.PATCH_STRIDE", "[2, 0, 4]"], r"^MVIT.PATCH_STRIDE is \[2, 0, 4\]: its entry 0 must lie in \[1, inf\)"),
        (KINETICS, ["MVIT.PATCH_STRIDE", "[2, 4]"], r"MVIT.PATCH_STRIDE needs 3 values with MVIT.PATCH_2D False"),
        (IMAGENET, ["DATA.TRAIN_CROP_SIZE", "8", "DATA.TEST_CROP_SIZE", "8"], r"DATA.TEST_CROP_SIZE 8 is smaller than one patch"),
        (IMAGENET, ["DATA.TRAIN_CROP_SIZE", "0", "DATA.TEST_CROP_SIZE", "0"], r"^DATA.TRAIN_CROP_SIZE is 0"),
        (IMAGENET, ["DATA.MEAN", "[0.5, 0.5]"], r"DATA.MEAN \[0.5, 0.5\] has 2 entries but DATA.INPUT_CHANNEL_NUM says 3 channels"),
        (IMAGENET, ["DATA.STD", "[0.2, 0.2, 0.2, 0.2]"], r"DATA.STD \[0.2, 0.2, 0.2, 0.2\] has 4 entries"),
        (IMAGENET, ["DATA.MEAN", "[0.5]", "DATA.STD", "[0.2]", "DATA.INPUT_CHANNEL_NUM", "[1]"], r"DATA.INPUT_CHANNEL_NUM \[1\]: the data sets decode RGB"),
        (IMAGENET, ["RNG_SEED", "-1"], r"^RNG_SEED is -1: it must lie in \[0, 18446744073709551615\]"),
        (IMAGENET, ["RNG_SEED", str(2**64)], r"^RNG_SEED is 18446744073709551616: it must lie in"),
        (IMAGENET, ["AUG.AA_TYPE", "rand-q9"], r"^AUG.AA_TYPE 'rand-q9' is not a policy timm can read \(AssertionError: Unknown RandAugment config section\)"),
        (IMAGENET, ["AUG.AA_TYPE", "randaugment-m9"], r"^AUG.AA_TYPE 'randaugment-m9' is not a policy timm can read"),
        (IMAGENET, ["AUG.AA_TYPE", "rand-m9x"], r"^AUG.AA_TYPE 'rand-m9x' is not a policy timm can read \(ValueError"),
        (IMAGENET, ["AUG.AA_TYPE", "augmented"], r"^AUG.AA_TYPE 'augmented' is not a policy timm can read"),
        (IMAGENET, ["AUG.AA_TYPE", "rand-m9-n0"], r"^AUG.AA_TYPE 'rand-m9-n0' asks for no operation"),
        (IMAGENET, ["AUG.AA_TYPE", "rand-m9-p2"], r"^AUG.AA_TYPE 'rand-m9-p2' asks for .* a probability outside \[0, 1\]"),
        (IMAGENET, ["AUG.AA_TYPE", "rand-m9-mstdnan"], r"^AUG.AA_TYPE 'rand-m9-mstdnan' has sections \['mstdnan'\] that are not <key><number>"),
        (IMAGENET, ["AUG.AA_TYPE", "rand-mx-n2"], r"^AUG.AA_TYPE 'rand-mx-n2' has sections \['mx'\] that are not <key><number>"),
        (KINETICS, ["AUG.AA_TYPE", "original-mstd0.5"], r"^AUG.AA_TYPE 'original-mstd0.5' is not a RandAugment policy, and clips"),
        (KINETICS, ["DATA.TRAIN_JITTER_SCALES", "[320, 256]"], r"^DATA.TRAIN_JITTER_SCALES is \[320, 256\]: a range \[min, max\] with min <= max"),
        (KINETICS, ["DATA.TRAIN_JITTER_SCALES_RELATIVE", "[1.0, 0.08]"], r"^DATA.TRAIN_JITTER_SCALES_RELATIVE is \[1.0, 0.08\]: a range"),
        (KINETICS, ["DATA.TRAIN_JITTER_ASPECT_RELATIVE", "[1.3333, 0.75]"], r"^DATA.TRAIN_JITTER_ASPECT_RELATIVE is \[1.3333, 0.75\]: a range"),
        (KINETICS, ["DATA.TRAIN_JITTER_SCALES", "[256]"], r"^DATA.TRAIN_JITTER_SCALES is \[256\]: it must be a list of 2 integers in \[1, inf\), not 1 entries"),
        (IMAGENET, ["SOLVER.LR_POLICY", "steps_with_relative_lrs", "SOLVER.STEPS", "[0, 30, 20]", "SOLVER.LRS", "[1, 0.1, 0.01]"],
         r"SOLVER.STEPS \[0, 30, 20\] must increase"),
        (IMAGENET, ["SOLVER.OPTIMIZING_METHOD", "sgd", "SOLVER.MOMENTUM", "0.0"], r"SOLVER.NESTEROV True needs SOLVER.MOMENTUM > 0"),
        (IMAGENET, ["MIXUP.LABEL_SMOOTH_VALUE", "1.0"], r"^MIXUP.LABEL_SMOOTH_VALUE is 1.0: it must lie in \[0, 1\)"),
        (IMAGENET, ["MODEL.DROPOUT_RATE", "1.0"], r"^MODEL.DROPOUT_RATE is 1.0: it must lie in \[0, 1\)"),
        (IMAGENET, ["MVIT.DROPPATH_RATE", "1.0"], r"^MVIT.DROPPATH_RATE is 1.0: it must lie in \[0, 1\)"),
        (IMAGENET, ["AUG.RE_PROB", "1.5"], r"^AUG.RE_PROB is 1.5: it must lie in \[0, 1\]"),
        (IMAGENET, ["DATA.IN_VAL_CROP_RATIO", "0.0"], r"^DATA.IN_VAL_CROP_RATIO is 0.0: it must lie in \(0, 1\]"),
        (IMAGENET, ["MVIT.DEPTH", "None"], r"^MVIT.DEPTH is None: it must be an integer in \[1, inf\), not None \(null in YAML\)"),
        (IMAGENET, ["SOLVER.CLIP_GRAD_VAL", "word"], r"^SOLVER.CLIP_GRAD_VAL is 'word': it must be None or a number in \(0, inf\), not str"),
        (IMAGENET, ["AUG.RE_MODE", "zeros"], r"^AUG.RE_MODE must be one of 'const', 'rand', 'pixel', got 'zeros'"),
        (IMAGENET, ["AUG.INTERPOLATION", "lanczos"], r"^AUG.INTERPOLATION must be one of 'bicubic', 'bilinear', 'nearest', 'random'"),
        (IMAGENET, ["DATA.DEMO", "mnist"], r"^DATA.DEMO must be one of '', 'digits', 'moving_digits', got 'mnist'"),
        (IMAGENET, ["OUTPUT_DIR", ""], r"^OUTPUT_DIR is '': it must be a non-empty string"),
        (IMAGENET, ["DATA.PATH_LABEL_SEPARATOR", ""], r"^DATA.PATH_LABEL_SEPARATOR is ''"),
    ],
)
def test_nonsense_is_refused_by_name(path, opts, match):
    with pytest.raises(ConfigError, match=match):
        _load(path, ["NUM_GPUS", "1", *opts])


@pytest.mark.parametrize(
    "path, opts",
    [
        # A probability of 1 is a recipe, not a mistake: erase every image, mix every batch, always cutmix.
        (IMAGENET, ["AUG.RE_PROB", "1.0", "MIXUP.PROB", "1.0", "MIXUP.SWITCH_PROB", "1.0"]),
        (IMAGENET, ["SOLVER.CLIP_GRAD_L2NORM", "None", "SOLVER.CLIP_GRAD_VAL", "0.5", "AUG.ON_DEVICE", "None"]),
        (IMAGENET, ["AUG.AA_TYPE", "", "DATA_LOADER.NUM_WORKERS", "-1", "RNG_SEED", str(2**64 - 1)]),
        (IMAGENET, ["AUG.AA_TYPE", "original-mstd0.5"]),  # AutoAugment on images (timm's create_transform takes it)
        (IMAGENET, ["AUG.AA_TYPE", "augmix-m5-w4-d2"]),
        (KINETICS, ["DATA.TRAIN_JITTER_SCALES", "[256, 256]", "DATA.SAMPLING_RATE", "1", "TEST.NUM_ENSEMBLE_VIEWS", "1"]),
    ],
)
def test_sane_values_at_the_edges_are_accepted(path, opts):
    _load(path, ["NUM_GPUS", "1", *opts])


def test_a_null_in_yaml_is_refused_where_the_key_has_no_none(tmp_path):
    path = tmp_path / "null.yaml"
    path.write_text(f"_BASE_: {IMAGENET}\nMVIT:\n  NUM_HEADS: null\n")
    with pytest.raises(ConfigError, match=r"^MVIT.NUM_HEADS is None: it must be an integer in \[1, inf\), not None \(null in YAML\)"):
        _load(str(path), ["NUM_GPUS", "1"])
    path.write_text(f"_BASE_: {IMAGENET}\nMVIT:\n  POOL_KVQ_KERNEL: null\nAUG:\n  ON_DEVICE: null\n")
    cfg = _load(str(path), ["NUM_GPUS", "1"])
    assert cfg.MVIT.POOL_KVQ_KERNEL is None and cfg.AUG.ON_DEVICE is None


@pytest.mark.parametrize(
    "text, first, again",
    [
        ("TRAIN:\n  BATCH_SIZE: 4\n  ENABLE: True\n  BATCH_SIZE: 8\n", "2:3", "4:3"),
        ("NUM_GPUS: 1\nTRAIN:\n  ENABLE: True\nNUM_GPUS: 2\n", "1:1", "4:1"),
        ("SOLVER: {BASE_LR: 0.1, BASE_LR: 0.2}\n", "1:10", "1:24"),
    ],
)
def test_a_key_set_twice_in_one_yaml_mapping_is_refused_with_both_places(tmp_path, text, first, again):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        _load(str(path))
    key = re.search(r"(\w+):", text.splitlines()[int(again.split(":")[0]) - 1][int(again.split(":")[1]) - 1:]).group(1)
    assert str(err.value) == (
        f"Key '{key}' appears twice in one mapping of {path}: at {path}:{first} and at {path}:{again}. "
        "YAML would keep only the last; remove one of them."
    )
    # The same key in two different mappings is two keys, and what a YAML merge key ("<<") brings in may be overridden.
    path.write_text(f"_BASE_: {IMAGENET}\nTRAIN:\n  ENABLE: True\nTEST:\n  ENABLE: True\nSOLVER:\n  <<: {{BASE_LR: 0.5}}\n  BASE_LR: 0.25\n")
    assert _load(str(path), ["NUM_GPUS", "1"]).SOLVER.BASE_LR == 0.25


def test_deterministic_cuda_training_refuses_the_pooling_without_a_deterministic_backward():
    """torch.use_deterministic_algorithms raises in AvgPool3d's CUDA backward (MaxPool3d and convs have
    deterministic kernels): MVIT.MODE avg with pooling is refused before any process starts."""
    opts = ["DETERMINISTIC", "True", "NUM_GPUS", "1", "MVIT.MODE", "avg"]
    with pytest.raises(ConfigError, match=r"^DETERMINISTIC True with MVIT.MODE avg cannot train on CUDA"):
        _load(KINETICS, opts)
    for fine in (["MVIT.MODE", "max"], ["DETERMINISTIC", "False"], ["NUM_GPUS", "0"]):
        _load(KINETICS, opts + fine)
    _load(IMAGENET, opts)  # Rev-ViT pools nothing
