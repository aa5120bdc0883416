"""The command line: the original README commands, flags after the overrides, and every user error
caught before any process starts (config gate, meeting point of several machines, data layout)."""

import os

import pytest

from revvit.engine import cli

from tinyrun import REPO, make_images, make_videos, run_net

README_COMMANDS = {
    "imagenet": ["--cfg", "configs/ImageNet/REV_VIT_B.yaml"],
    "kinetics": ["--cfg", "configs/Kinetics/REV_MVIT_B_16x4_CONV.yaml"],
}


@pytest.fixture
def launched(monkeypatch):
    """Record what would be launched instead of training the full-size models."""
    calls = []
    monkeypatch.setattr(cli, "launch", lambda cfg, func, init_method=None: calls.append((cfg, func, init_method)) or {})
    monkeypatch.chdir(REPO)
    return calls


@pytest.mark.parametrize("dataset", ["imagenet", "kinetics"])
def test_readme_commands_reach_the_launch_on_one_machine(dataset, tmp_path, launched):
    data = make_images(str(tmp_path), classes=3) if dataset == "imagenet" else make_videos(str(tmp_path), classes=2)
    cli.run([*README_COMMANDS[dataset], "DATA.PATH_TO_DATA_DIR", data, "NUM_GPUS", "1"])
    ((cfg, func, init_method),) = launched
    assert func is cli.train_and_test and init_method is None
    assert (cfg.NUM_GPUS, cfg.NUM_SHARDS, cfg.DATA.PATH_TO_DATA_DIR) == (1, 1, data)


@pytest.mark.parametrize("dataset", ["imagenet", "kinetics"])
def test_readme_commands_with_a_missing_data_dir_name_the_key(dataset, tmp_path, launched, capsys):
    missing = str(tmp_path / "path_to_your_dataset")
    assert cli.main([*README_COMMANDS[dataset], "DATA.PATH_TO_DATA_DIR", missing, "NUM_GPUS", "1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("run_net.py: error: ") and f"not found: {missing} (DATA.PATH_TO_DATA_DIR)" in err
    assert err.count("\n") == 1 and not launched


def test_init_method_and_other_flags_after_the_overrides_are_understood():
    args = cli.parse_args(["--cfg", "x.yaml", "NUM_SHARDS", "2", "SHARD_ID", "1", "--init_method", "tcp://10.0.0.1:9999"])
    assert args.init_method == "tcp://10.0.0.1:9999" and args.opts == ["NUM_SHARDS", "2", "SHARD_ID", "1"]
    args = cli.parse_args(["SOLVER.BASE_LR", "-1e-4", "--cfg=y.yaml", "--num_shards", "3", "--shard_id=2", "NUM_GPUS", "0"])
    assert (args.cfg_file, args.num_shards, args.shard_id) == ("y.yaml", 3, 2)
    assert args.opts == ["SOLVER.BASE_LR", "-1e-4", "NUM_GPUS", "0"]
    args = cli.parse_args(["--cfg", "x.yaml", "--opts", "NUM_GPUS", "0", "--init_method", "file:///tmp/rdv"])
    assert args.init_method == "file:///tmp/rdv" and args.opts == ["NUM_GPUS", "0"]


def test_several_machines_without_a_meeting_point_stop_before_any_process(tmp_path, launched, capsys):
    data = make_images(str(tmp_path), classes=3)
    argv = [*README_COMMANDS["imagenet"], "DATA.PATH_TO_DATA_DIR", data, "NUM_GPUS", "1", "NUM_SHARDS", "2"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "NUM_SHARDS 2" in err and "add 'NUM_SHARDS 1'" in err and "--init_method tcp://" in err and not launched
    cli.run([*argv, "SHARD_ID", "1", "--init_method", "tcp://127.0.0.1:29500"])
    ((cfg, _, init_method),) = launched
    assert init_method == "tcp://127.0.0.1:29500" and (cfg.NUM_SHARDS, cfg.SHARD_ID) == (2, 1)


def test_an_empty_test_csv_stops_the_run_before_training(tmp_path, launched, capsys):
    data = make_videos(str(tmp_path), classes=2, counts={"train": 2, "val": 1})
    with open(os.path.join(data, "test.csv"), "w"):
        pass
    argv = [*README_COMMANDS["kinetics"], "DATA.PATH_TO_DATA_DIR", data, "NUM_GPUS", "1"]
    assert cli.main(argv) == 1
    assert f"{os.path.join(data, 'test.csv')} is empty" in capsys.readouterr().err and not launched
    # A training-only run does not read the test split, nor a val split it never evaluates.
    os.remove(os.path.join(data, "val.csv"))
    cli.run([*argv, "TEST.ENABLE", "False", "TRAIN.EVAL_PERIOD", "0"])
    assert len(launched) == 1


def test_a_base_loop_is_one_paragraph(tmp_path, capsys):
    loop = tmp_path / "loop.yaml"
    loop.write_text("_BASE_: loop.yaml\n")
    assert cli.main(["--cfg", str(loop)]) == 1
    assert capsys.readouterr().err == f"run_net.py: error: _BASE_ files form a loop: {loop} -> {loop}. Remove the _BASE_ line that closes it.\n"


@pytest.mark.slow
def test_the_readme_command_with_a_missing_data_dir_exits_1_without_traceback(tmp_path):
    missing = str(tmp_path / "path_to_your_dataset")
    proc = run_net([*README_COMMANDS["imagenet"], "DATA.PATH_TO_DATA_DIR", missing, "NUM_GPUS", "1"])
    assert proc.returncode == 1 and "Traceback" not in proc.stdout and proc.stdout.count("\n") == 1, proc.stdout
    assert proc.stdout.startswith(f"run_net.py: error: ImageNet data directory not found: {missing} (DATA.PATH_TO_DATA_DIR)")


def test_one_line_says_what_actually_runs(tmp_path, launched, capsys, monkeypatch):
    from revvit.engine.launch import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cli.torch.cuda, "is_available", lambda: False)
    data = make_images(str(tmp_path), classes=3)
    cli.run([*README_COMMANDS["imagenet"], "DATA.PATH_TO_DATA_DIR", data, "NUM_GPUS", "1", "DATA_LOADER.NUM_WORKERS", "0"])
    ((cfg, _, _),) = launched
    threads = cpu_threads(cfg, 1, cores=os.cpu_count())
    assert capsys.readouterr().out == (
        f"run_net.py: 1 process on CPU (no CUDA device found), {threads} thread{'s' if threads > 1 else ''} "
        f"({os.cpu_count()} cores, 0 loader workers per process), float32\n"
    )
    cfg.defrost()
    cfg.NUM_GPUS, cfg.NUM_SHARDS = 2, 4
    assert cli.describe_processes(cfg, env={"OMP_NUM_THREADS": "3"}) == (
        "2 processes on each of 4 machines (8 in all) on CPU (no CUDA device found, gloo), OMP_NUM_THREADS 3 threads each, float32"
    )
    assert cli.describe_processes(cfg, external=(5, 8, 1, 2, "torchrun"), env={"OMP_NUM_THREADS": "3"}).startswith(
        "2 processes on each of 4 machines (8 in all), started by torchrun on CPU"
    )


def test_an_unknown_flag_is_refused_by_argparse_and_an_abbreviation_is_not_a_flag(capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_args(["--cfg", "x.yaml", "NUM_GPUS", "0", "--init-method", "tcp://h:1"])
    assert e.value.code == 2 and "unrecognized arguments: --init-method" in capsys.readouterr().err
    args = cli.parse_args(["--cfg", "x.yaml", "OUTPUT_DIR", "--init"])  # a value, not --init_method
    assert args.opts == ["OUTPUT_DIR", "--init"] and args.init_method is None
