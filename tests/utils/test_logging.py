"""Where json_stats lines go: per-iteration lines leave a terminal's stdout, never the log file."""

import io

import pytest

from revvit.utils import logging


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def _log_iter_and_epoch(tmp_path, monkeypatch, stdout, iter_stats_stdout):
    monkeypatch.setattr("sys.stdout", stdout)
    logging.setup_logging(str(tmp_path), iter_stats_stdout=iter_stats_stdout)
    logging.log_json_stats({"_type": "train_iter", "iter": "10/33"})
    logging.log_json_stats({"_type": "train_epoch", "epoch": "1/2"}, str(tmp_path))
    logging.get_logger("revvit.engine.train").info("Epoch 1/2: loss 1.0")
    return stdout.getvalue(), (tmp_path / "stdout.log").read_text()


@pytest.mark.parametrize("stdout, key, shown", [(_Terminal, False, False), (_Terminal, True, True), (io.StringIO, False, True)])
def test_iteration_stats_in_a_terminal_go_to_the_log_file_only(tmp_path, monkeypatch, stdout, key, shown):
    printed, logged = _log_iter_and_epoch(tmp_path, monkeypatch, stdout(), key)
    assert ('"_type": "train_iter"' in printed) is shown
    assert '"_type": "train_iter"' in logged  # the file always has everything
    for text in (printed, logged):
        assert '"_type": "train_epoch"' in text and "Epoch 1/2: loss 1.0" in text
    logging.setup_logging()  # leave no handler on the temporary directory
