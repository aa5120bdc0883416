"""Non-finite weights never pass silently: every reader refuses them naming the file and the first such tensor,
and a test whose scores are not finite reports no accuracy."""

import os

import pytest
import torch

from revvit.config import load_config
from revvit.engine import cli
from revvit.models import build_model
from revvit.models.factory import create_model
from revvit.utils import checkpoint as cu

from helpers import COMMON, REV_VIT
from tinyrun import make_images


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_images(str(tmp_path_factory.mktemp("images")))


def _args(data, out, *extra):
    return ["--cfg", "configs/ImageNet/REV_VIT_S.yaml", *REV_VIT, *COMMON, "MODEL.NUM_CLASSES", "3", "DATA.PATH_TO_DATA_DIR",
            str(data), "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "1", "SOLVER.WARMUP_EPOCHS", "0.5", "TRAIN.EVAL_PERIOD", "0",
            "TEST.ENABLE", "False", *extra]


def _tiny_state():
    """A fresh model of the runs' config (the data path plays no part in it)."""
    cfg = load_config(cli.parse_args(_args("unused", "unused")))
    torch.manual_seed(0)
    return build_model(cfg).state_dict()


def _nan_checkpoint(path):
    """The tiny model's weights, every one NaN (a run that diverged and saved anyway)."""
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in _tiny_state().items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"epoch": 0, "model_state": state, "cfg": ""}, path)
    return path


_FIRST = "'pos_embed' has 256 NaN and 0 inf of its 256 values"  # the first tensor of the state dict, 1 x 16 x 16


def _refused(err, path):
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert f"Checkpoint '{path}' holds non-finite weights: {_FIRST}; " in err


def test_the_reader_names_the_file_and_the_first_non_finite_tensor(tmp_path):
    path = str(tmp_path / "nan.pyth")
    state = _tiny_state()
    state["norm.bias"][3] = float("inf")
    state["head.projection.weight"][0, 0] = float("nan")
    torch.save({"model_state": state}, path)
    with pytest.raises(cu.CheckpointError) as e:
        cu.read_checkpoint(path)
    assert str(e.value) == (
        f"Checkpoint '{path}' holds non-finite weights: 'norm.bias' has 0 NaN and 1 inf of its 32 values; 1 more tensor(s) "
        "too. The run that saved it diverged; use an earlier checkpoint (delete this one to resume from the one before it)."
    )


def test_testing_nan_weights_is_refused_not_scored(images, tmp_path, capsys):
    nan = _nan_checkpoint(str(tmp_path / "nan.pyth"))
    args = _args(images, tmp_path / "eval", "TRAIN.ENABLE", "False", "TEST.ENABLE", "True", "TEST.CHECKPOINT_FILE_PATH", nan)
    assert cli.main(args) == 1  # was: "Test: top-1 33.33%", exit 0
    _refused(capsys.readouterr().err, nan)


@pytest.mark.parametrize("key", ["TRAIN.CHECKPOINT_FILE_PATH", "resume", "MODEL.PRETRAINED"])
def test_training_from_nan_weights_is_refused(images, tmp_path, capsys, monkeypatch, key):
    out = tmp_path / "run"
    if key == "resume":  # the run's own newest checkpoint
        nan, extra = _nan_checkpoint(cu.checkpoint_path(str(out), 1)), ["SOLVER.MAX_EPOCH", "2"]
    elif key == "MODEL.PRETRAINED":  # the official file, as torch hub's cache holds it
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
        nan, extra = _nan_checkpoint(str(tmp_path / "torch" / "hub" / "checkpoints" / "REV_VIT_S.pyth")), [key, "rev_vit_s"]
    else:
        nan = _nan_checkpoint(str(tmp_path / "nan.pyth"))
        extra = [key, nan]
    assert cli.main(_args(images, out, *extra)) == 1
    _refused(capsys.readouterr().err, nan)
    assert not os.path.exists(out / "json_stats.log")  # not one step was trained


def test_create_model_loads_a_checkpoint_path_and_refuses_a_nan_one(tmp_path):
    torch.manual_seed(0)
    trained = create_model("rev_vit_s", num_classes=3, MVIT__DEPTH=1)
    path = str(tmp_path / "mine.pyth")
    torch.save({"model_state": trained.state_dict()}, path)
    torch.manual_seed(1)
    loaded = create_model("rev_vit_s", num_classes=3, checkpoint_path=path, MVIT__DEPTH=1)
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), loaded.state_dict().values()))

    nan = _nan_checkpoint(str(tmp_path / "nan.pyth"))
    with pytest.raises(cu.CheckpointError) as e:
        create_model("rev_vit_s", checkpoint_path=nan, MVIT__DEPTH=1)
    assert f"Checkpoint '{nan}' holds non-finite weights: " in str(e.value)


def test_finite_weights_whose_scores_overflow_report_no_accuracy(images, tmp_path, capsys):
    state = _tiny_state()
    # Features of 1 (LayerNorm weight 0, bias 1) x head weights of 3e38, 32 of them: every logit is inf,
    # and the softmax of inf is NaN. Every weight is finite.
    state["norm.weight"].zero_()
    state["norm.bias"].fill_(1.0)
    state["head.projection.weight"].fill_(3e38)
    path = str(tmp_path / "overflow.pyth")
    torch.save({"model_state": state}, path)
    args = _args(images, tmp_path / "eval", "TRAIN.ENABLE", "False", "TEST.ENABLE", "True", "TEST.CHECKPOINT_FILE_PATH", path)
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert err.startswith(f"run_net.py: error: Testing {path} gave scores that are not finite (NaN or inf) for 9 of 9 samples "
                          "(the first: sample 0), so no accuracy is reported.")
    assert "Test: top-1" not in (tmp_path / "eval" / "stdout.log").read_text()
