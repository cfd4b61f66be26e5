"""ServingSpec: the batching and threading knobs of a rendered repository, apart from the renderers
(services/model_config.py re-exports it) so that `equiprobe build-repo`'s options, generated from
its fields, load without tritonclient or protobuf. Standard library and services/uploads.py only."""

from __future__ import annotations

from dataclasses import dataclass

from .uploads import MAX_PIXELS, MAX_REQUEST_MB


@dataclass(frozen=True)
class ServingSpec:
    """Batching and threading knobs, shared by both flavours where they apply."""

    max_batch_size: int = 32
    # No added wait: each step takes what queued while it was busy. Measured (bench serve, 2 cores):
    # a 2 ms delay at each of the three batched steps cost 1 in flight 40-45 -> 73 img/s, and under
    # load the batches form anyway.
    queue_delay_us: int = 0
    dali_threads: int = 2
    # Intra-op threads of every portable ONNX model but the encoder (probes, style networks).
    ort_threads: int = 2
    # Idle ONNX Runtime threads spin by default; beside the DALI and gate stubs on the same cores the
    # spinning burns the CPU they need (measured: the encoder's CPU per image 20.4 -> 8.3 ms at 32 in
    # flight, 16.6 -> 8.9 ms alone at batch 1).
    ort_spinning: bool = False
    # NAME_encoder runs ONNX Runtime on at most this many crops at a time (portable; 0: the
    # whole dynamic batch): services/runtime.py run_in_micro_batches has the measurements.
    encoder_micro_batch: int = 1
    # ... and runs this many micro-batches at once, each ONNX Runtime run on encoder_threads
    # intra-op threads: two one-thread runs beat one two-thread run (runtime.py has the figures).
    encoder_threads: int = 1
    encoder_parallel_runs: int = 2
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    trt_cache_path: str = "/tmp/equiprobe_trt_cache"
    # Uploads over these are refused by image_gate with an error that names the cap.
    max_request_mb: int = MAX_REQUEST_MB
    max_pixels: int = MAX_PIXELS
