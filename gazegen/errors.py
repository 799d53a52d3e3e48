"""The base of every error gazegen reports to its user.

A ``GazegenError`` is a problem with the user's input, data, config or files (a wrong key, a
missing or malformed checkpoint, an unreadable store), never a bug: the CLI prints its message as
one line and exits with code 2 (gazegen/cli/common.py). Each subclass keeps the builtin base that says
what kind of problem it is (``ValueError``, ``FileNotFoundError``, ``RuntimeError``), so code that
catches those still catches it. Anything else that escapes a command is a bug and keeps its
traceback.
"""


class GazegenError(Exception):
    """A problem with the user's input, data, config or files; the message says which and why."""


def first_line(error: BaseException) -> str:
    """The first non-blank line of ``error``'s message ("" when it has none): one line for a log or
    the CLI of an error whose message may carry a whole traceback (a Ray error's does)."""
    return next((line for line in str(error).splitlines() if line.strip()), "")


def last_line(error: BaseException) -> str:
    """The last non-blank line of ``error``'s message: the cause, for an error that carries a
    whole traceback (a Ray actor's that failed to start ends with its exception's own line)."""
    return next((line.strip() for line in reversed(str(error).splitlines()) if line.strip()), "")
