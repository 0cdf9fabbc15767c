"""Folders that readers see complete or not at all: written under a temporary name beside their destination, then
swapped in; what a killed writer leaves is recognised and removed.

A temporary folder's name carries its writer's process id and host (`<prefix><pid>@<host>@<random>`), so a later
writer knows it is stale once that process is gone (same host) or after a day (another host sharing the folder).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

OTHER_HOST_MAX_AGE = 24 * 3600  # seconds; a writer on another host is not asked whether it still runs
_WRITER = re.compile(r"(\d+)@([^@/]+)@[^@/]*$")  # the end of a temporary folder's name: pid@host@random


def make_temporary_folder(parent: Path, prefix: str) -> Path:
    """A new, empty folder `parent/<prefix>...` named after this process; stale ones with that prefix are removed
    first."""
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale(parent, prefix)
    folder = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}@{socket.gethostname()}@", dir=parent))
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)  # mkdtemp's 0700 would stay on the folder once it is swapped in
    return folder


@contextmanager
def temporary_folder(parent: Path, prefix: str) -> Iterator[Path]:
    """`make_temporary_folder`, removed when the block ends (unless it was renamed away)."""
    folder = make_temporary_folder(parent, prefix)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale(parent: Path, prefix: str) -> list[Path]:
    """Removes `parent/<prefix>...` folders whose writer is gone; returns them."""
    removed = []
    for folder in sorted(parent.glob(f"{prefix}*")) if parent.is_dir() else ():
        if folder.is_dir() and _writer_is_gone(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def replace_folder(source: Path, target: Path) -> None:
    """Renames the complete folder `source` to `target`; an existing `target` is renamed aside first and removed
    after, so `target` is only ever missing between two renames, never half-written."""
    if not target.exists():
        source.rename(target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    aside.rmdir()
    target.rename(aside)
    source.rename(target)
    shutil.rmtree(aside, ignore_errors=True)


def _writer_is_gone(folder: Path) -> bool:
    match = _WRITER.search(folder.name)
    if match is None:
        return False  # not a name this module writes
    pid, host = int(match.group(1)), match.group(2)
    if host != socket.gethostname():
        return time.time() - folder.stat().st_mtime > OTHER_HOST_MAX_AGE
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False
