"""What every command shares: the rich consoles and the error boundary.

Commands wrap their body in :func:`cli_errors`: an :class:`InferstackError` (or a file the user
named that is missing or unreadable) becomes one red line on stderr and exit code 1; the traceback
is shown only with ``--verbose``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from inferstack.errors import InferstackError

P = ParamSpec("P")
R = TypeVar("R")

out = Console()
err = Console(stderr=True)

_state = {"verbose": os.environ.get("INFERSTACK_VERBOSE", "") not in ("", "0", "false")}


def set_verbose(value: bool) -> None:
    _state["verbose"] = value


def verbose() -> bool:
    return _state["verbose"]


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` in red on stderr and return the Exit(1) to raise."""
    # The message carries user text (paths, patterns with brackets): escape it so rich prints it as is.
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def cli_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn user-caused errors into a red line and exit code 1 at the command boundary."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (InferstackError, OSError) as e:
            if verbose():
                err.print_exception(show_locals=False)
            message = str(e)
            if isinstance(e, OSError) and e.filename and str(e.filename) not in message:
                message = f"{e.filename}: {message}"
            raise fail(message) from None

    return wrapper
