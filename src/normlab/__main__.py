"""`python -m normlab` and the `normlab` console script.

The command line, and torch under it, is imported inside `main`: those imports take the first
seconds of every command (3 to 5 s here), and a Ctrl-C that came during them, outside
`cli.main`'s handling, ended in a KeyboardInterrupt traceback. Now it ends as one line and the
shell's status for an interrupted command, as it does later on. It leaves at once (`os._exit`):
nothing has run, so nothing is lost, and the interpreter's shutdown after a half-done import of
torch sometimes ended the process by the signal itself instead (1 start in 10 here).

Every command ends through `leave`, which skips the interpreter's teardown: after torch is
imported, that teardown is the process's costliest second in memory."""

import atexit
import os
import signal
import sys
import threading
from typing import NoReturn

from normlab.errors import INTERRUPTED


def main() -> None:
    try:
        from normlab.cli import main as cli_main
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the line
        sys.stderr.write("normlab: interrupted while starting; nothing ran\n")
        sys.stderr.flush()
        os._exit(INTERRUPTED)
    try:
        cli_main()
    except SystemExit as exc:
        leave(exc.code)


def leave(code: object) -> NoReturn:
    """End the process as `sys.exit(code)` would, but without the interpreter's teardown:
    the other threads joined, the atexit handlers run (multiprocessing's among them), the
    streams flushed, then `os._exit`. Python's teardown after importing torch (its CUDA build)
    pages in about 125 MB that nothing used before and takes about a second (a bare `import
    torch` peaks at 509 MiB and ends at 634 MiB, in 3.8 s instead of 2.7; one-off timings), so
    it was the default study's peak memory: 996,424 KiB with it, 872,892 without, on one
    epoch."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    if code is not None and not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if isinstance(code, int) else 0 if code is None else 1)


if __name__ == "__main__":
    main()
