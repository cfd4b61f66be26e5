"""Atomic file writes: readers (a polling Triton server, a resuming job) see the old file or the
new one, never half of one."""

from __future__ import annotations

import os
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
