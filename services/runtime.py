"""Light helpers shared by the python-backend models and in-process reference runs.

Kept free of torch so that the python-backend stubs stay small (~80 MB each).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Optional


def ort_session(path: Path, threads: Optional[int] = None, spinning: bool = False):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # Idle ONNX Runtime threads spin by default; beside DALI on the same cores (served, or in turn
    # in-process) the spinning burns the CPU DALI needs (services/serving_spec.py ServingSpec).
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_in_micro_batches(session, output_names: Optional[list[str]], feeds: dict, micro_batch: int,
                         parallel_runs: int = 1) -> list:
    """session.run over slices of at most `micro_batch` rows, outputs concatenated (0: one run),
    with up to `parallel_runs` slices in flight at once on a thread pool (ONNX Runtime's run is
    thread-safe and releases the GIL).

    Why (ONNX Runtime 1.32, 2 cores, no spinning): a convolutional encoder's activations for one
    image stay in cache, so CPU ms per crop squeezenet1_1 6.0 at 1 against 8.1 at 31 rows per run,
    open_nsfw 39 against 60; and one image gives a second intra-op thread little to do, so two
    single-threaded runs side by side beat one two-threaded run: squeezenet1_1 446 vs 208 img/s
    (4.4 vs 7.6 CPU ms per crop), open_nsfw 67 vs 40-45 (29 vs 37-41). Each row's result does not
    depend on its neighbours' or on which thread ran it."""
    import numpy as np

    rows = len(next(iter(feeds.values())))
    if micro_batch <= 0 or rows <= micro_batch:
        return session.run(output_names, feeds)

    def run(start: int) -> list:
        return session.run(output_names, {n: a[start:start + micro_batch] for n, a in feeds.items()})

    starts = range(0, rows, micro_batch)
    parts = list(_pool(parallel_runs).map(run, starts)) if parallel_runs > 1 else [run(i) for i in starts]
    return [np.concatenate(outputs) for outputs in zip(*parts)]


@lru_cache(maxsize=None)
def _pool(workers: int):
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(workers, thread_name_prefix="ort-run")


class OnnxRunner:
    """A model.onnx on ONNX Runtime with its threads, spinning, micro-batches and parallel runs:
    what the portable ONNX stub (python_models/onnx_encoder.py) serves with, and, built from a
    ServingSpec by served_encoder, how the in-process reference and the benchmarks run NAME_encoder."""

    def __init__(self, path: Path, threads: int, micro_batch: int, parallel_runs: int, spinning: bool = False):
        self.session = ort_session(path, threads, spinning=spinning)
        self.micro_batch, self.parallel_runs = micro_batch, parallel_runs

    @classmethod
    def served_encoder(cls, path: Path, serving) -> "OnnxRunner":
        return cls(path, serving.encoder_threads, serving.encoder_micro_batch, serving.encoder_parallel_runs,
                   spinning=serving.ort_spinning)

    def __call__(self, feeds: dict, output_names: Optional[list[str]] = None) -> list:
        return run_in_micro_batches(self.session, output_names, feeds, self.micro_batch, self.parallel_runs)
