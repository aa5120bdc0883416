"""tools/predict.py on the demo sets: class names from the checkpoint, the test pipeline, bad files skipped.

The image case uses the checkpoint of a two-epoch run of the digits demo (which also must leave
curves.png); the video case a randomly initialised moving-digits model, since what is checked is
the pipeline (views, ensembling, names), not the accuracy.
"""

import csv
import json
import os
import subprocess
import sys
import types

import pytest
import torch
from PIL import Image

from revvit.config import load_config
from revvit.datasets import build_dataset
from revvit.datasets.demo import DIRECTIONS, build_moving_digits
from revvit.engine import predict
from revvit.engine.evaluate import scores
from revvit.models import build_model
from revvit.utils import checkpoint as cu

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIGITS = os.path.join(REPO, "configs", "Demo", "REV_VIT_DIGITS.yaml")
MOVING = os.path.join(REPO, "configs", "Demo", "REV_MVIT_MOVING_DIGITS.yaml")


def _tool(name, *args):
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", name), *args], env=env, capture_output=True, text=True, timeout=600)


def _cfg(path, *opts):
    return load_config(types.SimpleNamespace(cfg_file=path, opts=list(opts)))


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """Two epochs of the digits demo (built in a temporary cache), no test: its directory and cache."""
    cache, out = tmp_path_factory.mktemp("cache"), tmp_path_factory.mktemp("digits_run")
    proc = _tool(
        "run_net.py", "--cfg", DIGITS, "DATA.DEMO_CACHE_DIR", str(cache), "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "2",
        "TRAIN.EVAL_PERIOD", "2", "TEST.ENABLE", "False", "DATA_LOADER.NUM_WORKERS", "0",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, cache


@pytest.mark.slow
def test_two_epoch_demo_run_leaves_curves_and_class_names(digits_run):
    out, _ = digits_run
    with Image.open(out / "curves.png") as im:
        assert im.format == "PNG"
    ckpt = torch.load(cu.latest_checkpoint(str(out)), weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["class_names"] == [str(d) for d in range(10)]


@pytest.mark.slow
def test_predict_digits_images_as_the_test_split_scores_them(digits_run, tmp_path):
    out, cache = digits_run
    checkpoint = cu.latest_checkpoint(str(out))
    cfg = _cfg(DIGITS, "DATA.DEMO_CACHE_DIR", str(cache))
    test = build_dataset("imagenet", cfg, "test")
    picks = [0, len(test) // 2, len(test) - 1]
    paths = [test._samples[i][0] for i in picks]
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("not a JPEG")

    result = tmp_path / "top.csv"
    proc = _tool("predict.py", "--cfg", DIGITS, "--checkpoint", checkpoint, "--topk", "3", "--output", str(result), *paths, str(bad))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(": ")[0] for line in lines] == paths
    assert f"skipped {bad}" in proc.stderr and "Traceback" not in proc.stderr
    rows = list(csv.DictReader(open(result)))
    assert len(rows) == 9 and {r["class"] for r in rows} <= {str(d) for d in range(10)}

    # The same images through the labelled test split and the model's eval (softmax) output.
    model = build_model(cfg)
    cu.load_checkpoint(checkpoint, model)
    model.eval()
    with torch.no_grad():
        probs = scores(model([torch.stack([test[i][0] for i in picks])]), cfg)
    for path, row_probs in zip(paths, probs):
        mine = [r for r in rows if r["input"] == path]
        top = row_probs.topk(3)
        assert [int(r["index"]) for r in mine] == top.indices.tolist()
        assert [r["class"] for r in mine] == [str(i) for i in top.indices.tolist()]  # folder names are digits
        assert max(abs(float(r["score"]) - v) for r, v in zip(mine, top.values.tolist())) <= 1e-6  # written with 6 decimals


def test_predict_exits_1_when_nothing_can_be_read(digits_run, tmp_path, capsys):
    out, _ = digits_run
    bad = tmp_path / "empty.png"
    bad.write_bytes(b"")
    assert predict.main(["--cfg", DIGITS, "--checkpoint", cu.latest_checkpoint(str(out)), str(bad)]) == 1
    assert "none of the 1 input(s) could be read" in capsys.readouterr().err
    assert predict.main(["--cfg", DIGITS, "--checkpoint", str(tmp_path / "missing.pyth"), str(bad)]) == 1
    assert "Checkpoint file not found" in capsys.readouterr().err


def test_predict_moving_digits_videos_ensembles_the_test_views(tmp_path, capsys):
    data = tmp_path / "moving"
    build_moving_digits(str(data), videos_per_split={"test": 3})
    cfg = _cfg(MOVING, "DATA.DEMO", "", "DATA.PATH_TO_DATA_DIR", str(data))
    assert cfg.TEST.NUM_ENSEMBLE_VIEWS == 2
    torch.manual_seed(0)
    model = build_model(cfg)
    checkpoint = cu.save_checkpoint(str(tmp_path / "run"), model, None, 0, cfg, class_names=DIRECTIONS)
    result = tmp_path / "top.json"
    assert predict.main(["--cfg", MOVING, "--checkpoint", checkpoint, "--topk", "4", "--output", str(result), str(data / "videos")]) == 0
    # Log lines ("[date][INFO] ...") reach stdout here only because earlier tests set up run_net's logging.
    printed = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("[")]
    doc = json.load(open(result))
    videos = sorted(str(p) for p in (data / "videos").iterdir())
    assert [p["input"] for p in doc["predictions"]] == videos and doc["skipped"] == []
    assert [line.split(": ")[0] for line in printed] == videos

    # Reference: the labelled test split, two views per video, scores averaged per video.
    test = build_dataset("kinetics", cfg, "test")
    assert test.classes == list(DIRECTIONS)
    model.eval()
    for video, pred in enumerate(doc["predictions"]):
        assert pred["input"] == os.path.abspath(test.video_path(video))
        with torch.no_grad():
            expected = scores(model([torch.stack([test[2 * video + v][0] for v in range(2)])]), cfg).mean(0)
        written = {t["index"]: t["score"] for t in pred["top"]}
        assert sorted(written) == [0, 1, 2, 3] and [t["class"] for t in pred["top"]] == [DIRECTIONS[t["index"]] for t in pred["top"]]
        # Same float32 arithmetic on the same clips; the bound is a few ulps of a probability <= 1.
        assert max(abs(written[c] - expected[c].item()) for c in range(4)) <= 1e-6
        assert abs(sum(written.values()) - 1.0) <= 1e-5


def test_class_names_fall_back_to_the_official_lists():
    assert predict.class_names(3, ["a", "b", "c"]) == ["a", "b", "c"]
    imagenet = predict.class_names(1000)
    assert len(imagenet) == 1000 and imagenet[0] == "tench" and imagenet[999] == "toilet tissue"
    kinetics = predict.class_names(400)
    assert len(kinetics) == 400 and kinetics[0] == "abseiling" and kinetics[-1] == "zumba"
    assert predict.class_names(2) == ["class 0", "class 1"]


def test_config_overrides_follow_opts_after_the_inputs():
    args = predict.parse_args(["--cfg", DIGITS, "--checkpoint", "x.pyth", "a.jpg", "b", "--opts", "DATA.TEST_CROP_SIZE", "32"])
    assert args.inputs == ["a.jpg", "b"] and args.opts == ["DATA.TEST_CROP_SIZE", "32"]
    with pytest.raises(SystemExit):
        predict.parse_args(["--cfg", DIGITS, "--output", "top.txt", "a.jpg"])  # only .csv / .json


def test_predict_refuses_what_it_cannot_finish_before_predicting(digits_run, tmp_path, capsys):
    out, _ = digits_run
    checkpoint = cu.latest_checkpoint(str(out))
    image = tmp_path / "x.png"
    Image.new("RGB", (28, 28)).save(image)
    missing = tmp_path / "no_such_folder" / "top.csv"
    assert predict.main(["--cfg", DIGITS, "--checkpoint", checkpoint, "--output", str(missing), str(image)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # nothing predicted, so nothing lost
    assert captured.err.startswith(f"predict.py: error: --output {missing}: the folder {missing.parent} does not exist")

    assert predict.main(["--cfg", DIGITS, "--checkpoint", "rev_vit_xl", str(image)]) == 1
    err = capsys.readouterr().err
    assert "--checkpoint 'rev_vit_xl' is neither a file nor an official model name; names with weights: rev_mvit_b" in err


def test_predict_skips_a_fifo_instead_of_blocking_on_it(digits_run, tmp_path, capsys):
    out, _ = digits_run
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    image = tmp_path / "x.png"
    Image.new("RGB", (28, 28)).save(image)
    assert predict.main(["--cfg", DIGITS, "--checkpoint", cu.latest_checkpoint(str(out)), str(fifo), str(image)]) == 0
    captured = capsys.readouterr()
    assert f"skipped {fifo}: not a regular file (a pipe or a device)" in captured.err
    assert [line.split(": ")[0] for line in captured.out.splitlines() if not line.startswith("[")] == [str(image)]


def test_a_class_list_that_does_not_fit_the_head_is_warned_about(capsys):
    assert predict.class_names(3, ["a", "b"]) == ["a", "b", "class 2"]
    assert "the checkpoint names 2 classes but the model has 3 outputs" in capsys.readouterr().err


def test_predict_refuses_nan_weights_naming_the_file_and_tensor(digits_run, tmp_path, capsys):
    out, _ = digits_run
    ckpt = torch.load(cu.latest_checkpoint(str(out)), weights_only=True)
    first = next(iter(ckpt["model_state"]))
    ckpt["model_state"] = {k: torch.full_like(v, float("nan")) for k, v in ckpt["model_state"].items()}
    nan = tmp_path / "nan.pyth"
    torch.save(ckpt, nan)
    image = tmp_path / "x.png"
    Image.new("RGB", (28, 28)).save(image)
    assert predict.main(["--cfg", DIGITS, "--checkpoint", str(nan), str(image)]) == 1  # was: "x.png: 0 nan, ...", exit 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"predict.py: error: Checkpoint '{nan}' holds non-finite weights: '{first}' has ")
    assert captured.err.count("\n") == 1


def test_scores_that_are_not_finite_are_an_error_not_a_prediction(tmp_path):
    class Overflowing(torch.nn.Module):  # finite weights, scores that are not: what an overflow gives
        def forward(self, x):
            return torch.full((x.shape[0], 10), float("nan"))

    image = tmp_path / "x.png"
    Image.new("RGB", (28, 28)).save(image)
    with pytest.raises(predict.NonFiniteScoresError) as e:
        predict.predict_files(Overflowing(), _cfg(DIGITS), [str(image)], [str(d) for d in range(10)])
    assert str(e.value).startswith(f"the model's scores for {image} are not finite (10 NaN and 0 inf of 10)")
