"""The errors a user can fix, as opposed to bugs: the command line prints them as one paragraph.

``UserError`` is raised for a mistake in the input or a fault of the environment (a missing or
unwritable file, a full disk, a loss that diverged, a stalled process); the message names the key,
file or rank and what to change. ``run_net.py`` prints it without a traceback and exits 1. Anything
else is a bug in revvit and keeps its traceback. ``Interrupted`` is a stop asked for by a signal
(Ctrl-C, a scheduler's SIGTERM or SIGUSR1), with where the run stopped and how to continue; it exits
with the signal's code, 128 + its number, as a shell reports a process ended by that signal.
"""

import signal

__all__ = ["Interrupted", "UserError"]


class UserError(Exception):
    """A mistake or an environment fault the user can fix; its message is the whole report."""


class Interrupted(KeyboardInterrupt):
    """A stop asked for by a signal: the message says where the run stopped and how to resume it.

    A subclass of KeyboardInterrupt, so that ``except Exception`` clauses on the way out do not
    swallow it. ``exit_code``: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM, 138 for
    SIGUSR1 on Linux).
    """

    def __init__(self, message="Interrupted", signum=signal.SIGINT):
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = 128 + self.signum

    def __reduce__(self):  # travels from a spawned rank to the launcher through a queue
        return type(self), (str(self), self.signum)
