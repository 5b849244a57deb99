"""`python -m normlab` and the `normlab` console script.

The command line, and torch under it, is imported inside `main`: those imports take the first
seconds of every command (3 to 5 s here), and a Ctrl-C that came during them, outside
`cli.main`'s handling, ended in a KeyboardInterrupt traceback. Now it ends as one line and the
shell's status for an interrupted command, as it does later on. It leaves at once (`os._exit`):
nothing has run, so nothing is lost, and the interpreter's shutdown after a half-done import of
torch sometimes ended the process by the signal itself instead (1 start in 10 here).

A command that ends by `sys.exit` (every one but a crash, whose traceback takes the usual way
out) ends through `leave`, which skips the interpreter's teardown: after torch is imported, that
teardown is the process's costliest second in memory."""

import atexit
import os
import signal
import sys
import threading
import traceback
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
    """End the process as `sys.exit(code)` would, but without the interpreter's teardown, in
    CPython's order: a code that is not an int written to stderr; the threads' shutdown
    (`threading._shutdown`: the hooks that stop idle executors, then the other threads joined;
    an error there reported, not raised); the atexit handlers (multiprocessing's among them);
    Python's open streams flushed (a failed flush, such as into a closed pipe, makes the status
    120, as in Python's own exit); then `os._exit`. From a thread other than the main one it is
    plain `sys.exit`: that thread cannot wait for the main one.

    Python's teardown after importing torch (its CUDA build) pages in about 125 MB that nothing
    used before: a bare `import torch` has a max RSS of 509 MiB when it leaves by `os._exit`,
    634 MiB through the teardown, and takes about a second longer (one-off timings). It was the
    default study's peak memory (docs/results/timings/mnist-s7-default-study.txt: 997,132-998,828
    KiB before this, 872,880-873,096 KiB after)."""
    if threading.current_thread() is not threading.main_thread():
        sys.exit(code)
    if code is not None and not isinstance(code, int) and sys.stderr is not None:
        sys.stderr.write(f"{code}\n")
    try:
        threading._shutdown()
    except BaseException:  # e.g. a second Ctrl-C while waiting for a thread
        traceback.print_exc()
    atexit._run_exitfuncs()
    status = code if isinstance(code, int) else 0 if code is None else 1
    for stream in (sys.stdout, sys.stderr):
        if stream is None or stream.closed:
            continue
        try:
            stream.flush()
        except Exception:  # the reader went away (a closed pipe), or the disk is full
            status = 120
    os._exit(status & 0xFF)


if __name__ == "__main__":
    main()
