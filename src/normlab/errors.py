"""The one error type that crosses from the library to the user.

Library code raises `NormlabError` with a message a user can act on (what was wrong and how to
fix it); only the CLI turns it into one line on stderr and exit status 2. The status of an
interrupted command is here too: the start-up entry (`normlab.__main__`) needs it before the CLI,
and this module imports nothing.
"""

INTERRUPTED = 130  # the shell's status for a command ended by SIGINT (cli, __main__)


class NormlabError(Exception):
    """A problem with the user's input or environment, worded for the user."""


def first_line(exc: BaseException, default: str) -> str:
    """The first line of an exception's message (`default` when it has none): what a one-line
    error can quote of a library's multi-line message."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else default
