"""`python -m normlab` and the `normlab` console script.

The command line, and torch under it, is imported inside `main`: those imports take the first
seconds of every command (3 to 5 s here), and a Ctrl-C that came during them, outside
`cli.main`'s handling, ended in a KeyboardInterrupt traceback. Now it ends as one line and the
shell's status for an interrupted command, as it does later on. It leaves at once (`os._exit`):
nothing has run, so nothing is lost, and the interpreter's shutdown after a half-done import of
torch sometimes ended the process by the signal itself instead (1 start in 10 here)."""

import os
import signal
import sys

from normlab.errors import INTERRUPTED


def main() -> None:
    try:
        from normlab.cli import main as cli_main
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the line
        sys.stderr.write("normlab: interrupted while starting; nothing ran\n")
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    cli_main()


if __name__ == "__main__":
    main()
