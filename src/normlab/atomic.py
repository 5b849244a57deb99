"""Atomic file writes, the one way anything in a study folder is written.

A killed process (SIGKILL, a laptop that sleeps forever, a notebook kernel that dies) must leave
either the old file or the new one, never half of one; a full disk or an unwritable folder must
be a message the user can act on, not a traceback. Both come from writing to a temporary name
in the same folder, syncing, and renaming over the target. This module sits below `train` and
`results` so that checkpoints and results share it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from normlab.errors import NormlabError

TMP_SUFFIX = ".tmp"


def tmp_path(path: Path) -> Path:
    """The temporary name `path` is written under: hidden, so a reader listing a folder skips
    it, and recognisable, so leftovers of a killed process can be cleaned (`clean_tmp`)."""
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file, fsync and a rename.

    Any OSError (no space left, permission denied, a file where a folder should be) becomes a
    NormlabError naming the path; the temporary file is removed and `path` keeps its old
    content.
    """
    path = Path(path)
    tmp = tmp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # the folder itself may be unusable
            tmp.unlink(missing_ok=True)
        raise NormlabError(
            f"cannot write {path}: {exc.strerror or exc}; free some space, or choose a "
            "writable --out"
        ) from None


def clean_tmp(folder: Path) -> int:
    """Remove the temporary files a killed process left under `folder`; returns how many."""
    removed = 0
    for tmp in Path(folder).rglob(f".*{TMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
