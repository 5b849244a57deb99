"""The `normlab` command line: the commands (`commands`), the options `run` and `sweep` share
(`options`), the terminal display (`display`) and `normlab bench` (`bench`).

`main` is the one border errors cross: library code raises `NormlabError`, and only here does it
become one line on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from typer.exceptions import TyperException

from normlab.cli.commands import app
from normlab.cli.display import err_console
from normlab.errors import INTERRUPTED, NormlabError

__all__ = ["app", "main"]


def fail(message: str) -> NoReturn:
    """Print `message` as exactly one line on stderr (newlines from wrapped library or OS
    messages folded) and exit with status 2."""
    line = " ".join(message.split())
    err_console.print(f"normlab: error: {line}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(2)


def main() -> None:
    """Entry point: usage and input errors become one line on stderr and exit status 2."""
    try:
        code = app(standalone_mode=False)
    except NormlabError as exc:
        fail(str(exc))
    except OSError as exc:  # a safety net: the library wraps the OS errors it expects
        where = f" ({exc.filename})" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}")
    except TyperException as exc:  # usage errors: unknown option, bad value, missing argument
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        fail(f"{exc.format_message()}{hint}")
    except (typer.Abort, KeyboardInterrupt):
        interrupted()
    if code == INTERRUPTED:  # newer typer (0.29 here) turns Ctrl-C into this status itself
        interrupted()
    sys.exit(code or 0)


def interrupted() -> NoReturn:
    """Ctrl-C: say what is kept and how to go on, and exit as the shell expects."""
    err_console.print(
        "normlab: interrupted; finished runs are kept, re-run to resume",
        markup=False,
        highlight=False,
    )
    sys.exit(INTERRUPTED)
