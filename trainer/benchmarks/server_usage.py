"""Memory and CPU of a local server's processes: tritonserver and one python-backend stub per
model instance, read from the operating system (psutil), named by the model each stub runs.

`bench serve` prints them: the RSS of everything one encoder's models keep loaded, and where the
CPU time of each image goes (which stub, the server's own threads, the client)."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator, Optional

import psutil


def model_of(process: psutil.Process) -> str:
    """The model a python-backend stub runs (its command line holds .../MODEL/VERSION/model.py),
    or the process name (tritonserver)."""
    try:
        for word in process.cmdline():
            parts = [p for p in word.split(os.sep) if p]
            for i in range(1, len(parts)):
                if parts[i].isdigit() and parts[-1] == "model.py":
                    return parts[i - 1]
        return process.name()
    except psutil.Error:
        return "?"


def server_processes(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _by_model(pid: int, measure) -> dict[str, float]:
    """measure(process) summed per model (a model's stubs together) and for tritonserver."""
    usage: dict[str, float] = {}
    for process in server_processes(pid):
        try:
            model = model_of(process)
            usage[model] = usage.get(model, 0.0) + measure(process)
        except psutil.Error:  # a stub that exited meanwhile
            pass
    return usage


def rss_by_model(pid: int) -> dict[str, float]:
    """MiB resident per model and for tritonserver, biggest first."""
    usage = _by_model(pid, lambda process: process.memory_info().rss / 2**20)
    return dict(sorted(usage.items(), key=lambda item: -item[1]))


def cpu_by_model(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) so far, per model and for tritonserver."""
    return _by_model(pid, lambda process: sum(process.cpu_times()[:2]))


@contextmanager
def cpu_per_item(server_pid: Optional[int], items: int) -> Iterator[dict[str, float]]:
    """Fills the yielded dict, on exit, with CPU ms per item of each server process (by model;
    none without a pid), of this process (`client`, its threads only) and `total`, over the
    block's duration, and its wall ms per item."""
    result: dict[str, float] = {}
    server = (lambda: cpu_by_model(server_pid)) if server_pid is not None else dict
    before, own = server(), os.times()
    start = time.perf_counter()
    yield result
    after, own_after = server(), os.times()
    for model, seconds in after.items():
        spent = seconds - before.get(model, 0.0)
        if spent > 0:
            result[model] = spent * 1000 / items
    result["client"] = (own_after.user + own_after.system - own.user - own.system) * 1000 / items
    result["total"] = sum(result.values())
    result["wall_ms"] = (time.perf_counter() - start) * 1000 / items
