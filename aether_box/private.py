"""The box's files are its user's alone: the data dir 0700, everything in it 0600 at most.

The box keeps people's memory, conversations and CURVE secrets, on machines that several
users share. Rather than trust each writer to pass a mode, the process that owns a data dir
clears the group and other bits from its umask (so every file, database, WAL, log, key and
ipc socket it makes is private whatever the user's umask was), and tightens what an older
version, or another umask, left readable. Names that come from requests become file names
only through `child_path`, which never leaves the directory it is given.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from aether_box.errors import BadRequest

__all__ = ["PRIVATE_UMASK", "child_path", "make_private", "private_umask"]

PRIVATE_UMASK = 0o077  # no bits for group and others


def private_umask() -> None:
    """From now on, this process creates files and directories for its user only."""
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)


def make_private(data_dir: Path) -> None:
    """Create `data_dir` if needed; take group and other access from it and all it holds."""
    private_umask()
    data_dir.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(data_dir):
        for name in [".", *dirs, *files]:
            path = os.path.join(root, name)
            try:
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode) or not mode & PRIVATE_UMASK:
                    continue
                os.chmod(path, stat.S_IMODE(mode) & ~PRIVATE_UMASK)
            except FileNotFoundError:  # removed while we walked (a socket, a temp file)
                continue


def child_path(root: Path, name: str) -> Path:
    """`root / name` for a name taken from a request: BadRequest if it could leave `root`."""
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or name.startswith(".")
        or len(name.encode()) > 255
    ):
        raise BadRequest(
            f"{name[:80]!r} cannot name a file: use letters, digits, '_', '-' or '.' "
            "(not first), without '/' or '\\'"
        )
    return root / name
