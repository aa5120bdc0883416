"""How a rank of a finished job ends: after its group is destroyed, without interpreter finalization.

FSDP2 keeps its process group alive past ``destroy_process_group`` (revvit.engine.launch.end_process
says how), and finalizing the interpreter around the group's running C++ threads aborted about one
finished 2-process FSDP run in four with SIGABRT. A rank that skips finalization cannot abort there.
"""

import os

import pytest

from revvit.engine.launch import launch

from spawn_jobs import launch_cfg, mark_interpreter_finalization

pytestmark = pytest.mark.slow  # every test here spawns processes or trains


def test_a_finished_rank_exits_without_interpreter_finalization(tmp_path):
    assert launch(launch_cfg(tmp_path), mark_interpreter_finalization) is None  # both ranks exited 0
    assert sorted(os.listdir(tmp_path)) == []  # no atexit handler ran: no finalization
