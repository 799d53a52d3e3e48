"""What every `gazegen` command shares: the one-line report of a user error, the --set option, config defaults."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

from gazegen.errors import GazegenError

SetOption = typer.Option(None, "--set", help="Override a config key: --set key.sub=value (repeatable).")
# How a config path is found (gazegen/config/loader.py find_config): the defaults work from any folder.
FROM_CONFIGS = "a relative path missing from the working folder is looked up in the repository's configs/"


# What a command reports as one line (exit code 2): gazegen's own user errors, and a path that does
# not exist. Anything else (a RuntimeError from torch, a bug) keeps its traceback.
USER_ERRORS = (GazegenError, FileNotFoundError)


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@contextmanager
def _reported() -> Iterator[None]:
    """Turn a user error raised inside the block into ``error: <message>`` on stderr and exit code 2."""
    try:
        yield
    except USER_ERRORS as e:
        _fail(str(e))


def config_default(config: Any, key: str) -> str:
    """The default of a dotted ``key`` of the config dataclass ``config`` as --help shows it (the typed options
    default to None, "not given", so that a preset's value is not overridden)."""
    value = config()
    for part in key.split("."):
        value = getattr(value, part)
    return str(value)
