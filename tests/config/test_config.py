"""The config tree loads PySlowFast's files unchanged and rejects mistakes with useful messages."""

import argparse
import glob
import os

import pytest

from fvcore.common.config import CfgNode as FvcoreCfgNode

from helpers import OFFICIAL_CONFIGS, REPO, make_cfg
from revvit.config import ConfigError, get_cfg, load_config, merge_file, merge_opts
from revvit.config.defaults import _C, get_defaults


def _official(name):
    return os.path.join(OFFICIAL_CONFIGS, name)


def _load(path, opts=()):
    return load_config(argparse.Namespace(cfg_file=path, opts=list(opts)))


OFFICIAL = ["ImageNet/REV_VIT_S.yaml", "ImageNet/REV_VIT_B.yaml", "ImageNet/REV_MVIT_B_16_CONV.yaml", "Kinetics/REV_MVIT_B_16x4_CONV.yaml"]


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_files_merge_unchanged(name, reference_dir):
    cfg = get_cfg()
    cfg.merge_from_file(_official(name))  # as PySlowFast's tools/run_net.py does
    assert cfg.MVIT.REV.ENABLE is True
    assert cfg.MODEL.LOSS_FUNC == "soft_cross_entropy"
    assert cfg == merge_file(get_cfg(), _official(name))


SHIPPED = sorted(glob.glob(os.path.join(REPO, "configs", "*", "*.yaml")))


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_plain_merge_from_file_gives_what_load_config_and_pyslowfast_give(path):
    """PySlowFast-style code (cfg.merge_from_file, _BASE_ included) on revvit's tree, and fvcore's own
    CfgNode (PySlowFast's, with yacs' type rules) over the same defaults, both give load_config's tree."""
    cfg = get_cfg()
    cfg.merge_from_file(path)
    assert cfg == _load(path)
    theirs = FvcoreCfgNode(get_defaults())
    theirs.merge_from_file(path)
    assert theirs == cfg


def test_the_tree_is_fvcore_s_cfgnode_at_every_level():
    cfg = get_cfg()
    assert isinstance(cfg, FvcoreCfgNode) and isinstance(cfg.MVIT.REV, type(cfg))
    assert isinstance(cfg.clone(), type(cfg))


@pytest.mark.parametrize("tree", [get_cfg, lambda: FvcoreCfgNode(get_defaults())], ids=["revvit", "fvcore"])
def test_merge_from_list_takes_every_key_s_command_line_values(tree):
    """Every key holds one type, so yacs' own merge_from_list (fvcore's tree) takes these as revvit's does."""
    cfg = tree()
    cfg.merge_from_list(["AUG.ON_DEVICE", "False", "DATA_LOADER.NUM_WORKERS", "-1", "SOLVER.CLIP_GRAD_L2NORM", "1.0"])
    assert cfg.AUG.ON_DEVICE is False and cfg.DATA_LOADER.NUM_WORKERS == -1 and cfg.SOLVER.CLIP_GRAD_L2NORM == 1.0
    cfg.merge_from_list(["AUG.ON_DEVICE", "True"])
    assert cfg.AUG.ON_DEVICE is True
    cfg.merge_from_list(["AUG.ON_DEVICE", "None", "DATA_LOADER.NUM_WORKERS", "0"])
    assert cfg.AUG.ON_DEVICE is None and cfg.DATA_LOADER.NUM_WORKERS == 0


def test_merge_from_list_keeps_revvit_s_messages():
    cfg = get_cfg()
    with pytest.raises(ConfigError, match=r"'DATA_LOADER.NUM_WORKERS' \(from merge_from_list\) expects int like 8, got str 'auto'\. -1 means"):
        cfg.merge_from_list(["DATA_LOADER.NUM_WORKERS", "auto"])
    with pytest.raises(ConfigError, match=r"Unknown config key 'SOLVER.BASE_LRR' \(from merge_from_list\).*Did you mean: SOLVER.BASE_LR"):
        cfg.merge_from_list(["SOLVER.BASE_LRR", "0.1"])
    cfg.freeze()
    with pytest.raises(AttributeError, match="frozen"):
        cfg.merge_from_list(["NUM_GPUS", "2"])
    with pytest.raises(AttributeError, match="frozen"):
        cfg.merge_from_file(os.path.join(REPO, "configs", "ImageNet", "VIT_S.yaml"))
    assert cfg.NUM_GPUS == 1


def test_tuple_strings_in_yaml_become_lists(reference_dir):
    cfg = make_cfg(_official("Kinetics/REV_MVIT_B_16x4_CONV.yaml"))
    assert cfg.MVIT.PATCH_KERNEL == [3, 7, 7]
    assert cfg.MVIT.PATCH_STRIDE == [2, 4, 4]


def test_official_kinetics_file_stops_with_the_fix_named(reference_dir):
    with pytest.raises(ConfigError, match="MVIT.CLS_EMBED_ON False"):
        _load(_official("Kinetics/REV_MVIT_B_16x4_CONV.yaml"))
    cfg = _load(_official("Kinetics/REV_MVIT_B_16x4_CONV.yaml"), ["MVIT.CLS_EMBED_ON", "False"])
    assert cfg.is_frozen()


@pytest.mark.parametrize("name", OFFICIAL)
def test_our_configs_keep_the_published_hyperparameters(name, reference_dir):
    ours, theirs = make_cfg(os.path.join("configs", name)), make_cfg(_official(name))
    allowed = {"OUTPUT_DIR", "NUM_SHARDS", "MVIT.CLS_EMBED_ON", "DATA.DECODING_BACKEND", "TEST.ENABLE", "TEST.NUM_ENSEMBLE_VIEWS", "TEST.NUM_SPATIAL_CROPS", "MODEL.ARCH"}

    def flat(node, prefix=""):
        out = {}
        for k, v in node.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
        return out

    a, b = flat(ours), flat(theirs)
    differing = {k for k in a if a[k] != b[k]}
    assert differing <= allowed, {k: (a[k], b[k]) for k in differing - allowed}


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*", "*.yaml"))))
def test_every_shipped_config_loads(path):
    cfg = _load(path)
    assert cfg.is_frozen()


@pytest.mark.parametrize("twin,base", [("VIT_S", "REV_VIT_S"), ("VIT_B", "REV_VIT_B"), ("MVITV2_B", "REV_MVIT_B_16_CONV")])
def test_twins_differ_only_in_reversibility(twin, base):
    a = make_cfg(f"configs/ImageNet/{twin}.yaml")
    b = make_cfg(f"configs/ImageNet/{base}.yaml")
    assert a.MVIT.REV.ENABLE is False and b.MVIT.REV.ENABLE is True
    a.MVIT.REV.ENABLE, a.OUTPUT_DIR = True, b.OUTPUT_DIR
    assert a == b


def test_unknown_key_names_the_nearest_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"'SOLVER.BASE_LRR'.*Did you mean: SOLVER.BASE_LR"):
        merge_opts(get_cfg(), ["SOLVER.BASE_LRR", "0.1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("MVIT:\n  EMBED_DIMS: 96\n")
    with pytest.raises(ConfigError, match=rf"'MVIT.EMBED_DIMS' \(from '{bad}'\).*MVIT.EMBED_DIM"):
        merge_file(get_cfg(), str(bad))


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="'MVIT.DEPTH'.*expects int"):
        merge_opts(get_cfg(), ["MVIT.DEPTH", "deep"])
    cfg = merge_opts(get_cfg(), ["SOLVER.BASE_LR", "1", "SOLVER.CLIP_GRAD_L2NORM", "1.0"])
    assert cfg.SOLVER.BASE_LR == 1.0 and isinstance(cfg.SOLVER.BASE_LR, float)


def test_odd_override_list_is_rejected():
    with pytest.raises(ConfigError, match="KEY VALUE pairs"):
        merge_opts(get_cfg(), ["NUM_GPUS"])


@pytest.mark.parametrize(
    "opts,match",
    [
        (["DATA.TRAIN_CROP_SIZE", "230", "DATA.TEST_CROP_SIZE", "230"], "not divisible by the patch stride"),
        (["DATA.TEST_CROP_SIZE", "256"], "must be equal"),
        (["MVIT.REV.BUFFER_LAYERS", "[1, 3]"], r"Blocks \[14\].*BUFFER_LAYERS"),
        (["MVIT.DEPTH", "10"], "outside 0..9"),
        (["SOLVER.OPTIMIZING_METHOD", "lamb"], "OPTIMIZING_METHOD"),
        (["NUM_GPUS", "3"], "multiple of its processes"),
    ],
)
def test_impossible_combinations_fail_early(opts, match):
    with pytest.raises(ConfigError, match=match):
        _load(os.path.join(REPO, "configs/ImageNet/REV_MVIT_B_16_CONV.yaml"), opts)


def test_every_default_key_has_a_comment():
    with open(os.path.join(REPO, "revvit", "config", "defaults.py")) as f:
        lines = [line for line in f if line.startswith("_C.") and " = CfgNode()" not in line]
    assert len(lines) > 100
    uncommented = [line.strip() for line in lines if "#" not in line]
    assert not uncommented


def test_defaults_are_not_shared_between_calls():
    cfg = get_cfg()
    cfg.MVIT.DEPTH = 99
    assert get_cfg().MVIT.DEPTH == _C.MVIT.DEPTH != 99


def test_missing_file_is_reported():
    with pytest.raises(ConfigError, match="not found: 'nope.yaml'"):
        _load("nope.yaml")


def test_base_loops_are_named_with_their_chain(tmp_path):
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\nNUM_GPUS: 0\n")
    (tmp_path / "b.yaml").write_text("_BASE_: c.yaml\n")
    (tmp_path / "c.yaml").write_text("_BASE_: b.yaml\n")
    a, b, c = (str(tmp_path / n) for n in ("a.yaml", "b.yaml", "c.yaml"))
    with pytest.raises(ConfigError) as err:
        merge_file(get_cfg(), a)
    # The loop is b -> c -> b; a only leads into it.
    assert str(err.value).startswith(f"_BASE_ files form a loop: {b} -> {c} -> {b}.")
    (tmp_path / "self.yaml").write_text("_BASE_: self.yaml\n")
    with pytest.raises(ConfigError, match=r"loop: .*self.yaml -> .*self.yaml\."):
        merge_file(get_cfg(), str(tmp_path / "self.yaml"))


def test_a_base_chain_merges_in_order(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("NUM_GPUS: 0\nSOLVER:\n  BASE_LR: 0.5\n")
    (tmp_path / "sub" / "child.yaml").write_text("_BASE_: ../base.yaml\nSOLVER:\n  BASE_LR: 0.25\n")
    cfg = merge_file(get_cfg(), str(tmp_path / "sub" / "child.yaml"))
    assert cfg.NUM_GPUS == 0 and cfg.SOLVER.BASE_LR == 0.25


def test_missing_base_names_the_file_that_refers_to_it(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: ../nowhere/base.yaml\n")
    with pytest.raises(ConfigError, match=rf"_BASE_ '../nowhere/base.yaml' named in '{child}' not found"):
        merge_file(get_cfg(), str(child))


@pytest.mark.parametrize(
    "text,where,reason",
    [
        ("TRAIN:\n  BATCH_SIZE: 4\n   ENABLE: True\n", "3:10", "mapping values are not allowed here"),
        ("MVIT:\n  DIM_MUL: [[1, 2.0], [3, 2.0]\nNUM_GPUS: 1\n", "3:1", "expected ',' or ']', but got '<scalar>' (while parsing a flow sequence started at 2:12)"),
        ("TRAIN:\n\tBATCH_SIZE: 4\n", "2:1", "found character '\\t' that cannot start any token (while scanning for the next token)"),
    ],
)
def test_malformed_yaml_names_file_line_column_and_reason(tmp_path, text, where, reason):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as err:
        _load(str(bad))
    assert f"Malformed YAML at {bad}:{where}: " in str(err.value)
    assert reason in str(err.value)
    # Also when the malformed file is a _BASE_ of the one given.
    (tmp_path / "child.yaml").write_text("_BASE_: bad.yaml\n")
    with pytest.raises(ConfigError, match=rf"Malformed YAML at {bad}:{where}"):
        _load(str(tmp_path / "child.yaml"))


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_yaml_says_it_is_empty(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^Config file '{path}' is empty \(no keys, or only comments\)"):
        _load(str(path))


def test_an_override_given_to_create_model_is_named_as_such():
    from revvit.models.factory import model_cfg

    with pytest.raises(ConfigError, match=r"Unknown config key 'MVIT.DEPHT' \(from the overrides given to create_model\('rev_vit_s'\)\)"):
        model_cfg("rev_vit_s", MVIT__DEPHT=2)
