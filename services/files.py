"""Atomic file and directory writes: readers (a polling Triton server, a resuming job, a loading
index) see the old file or the new one, never half of one; and the hashes that record them."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Write beside PATH (a hidden name, so no scan mistakes it for content), flush to disk, rename over."""
    staged = path.with_name(f".{path.name}.tmp")
    try:
        with open(staged, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staged, path)
    except BaseException:  # a full disk, say: no half-written staged file stays behind
        staged.unlink(missing_ok=True)
        raise


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a directory's entries (a rename is durable once its directory is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def swap_in(staged: Path, target: Path) -> None:
    """Replace the directory `target` (or nothing) by the complete directory `staged`: in one step
    where Linux allows, else two renames (a crash between them leaves the old one aside, at
    .NAME.old-PID); the old one is removed after, and the parent directory flushed."""
    if target.exists():
        if not _exchange(staged, target):
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
            os.replace(staged, target)
            staged = old
        shutil.rmtree(staged, ignore_errors=True)
    else:
        os.replace(staged, target)
    fsync_path(target.parent)
