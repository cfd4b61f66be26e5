"""INT8 against FP32 NAME_encoder, side by side in one run: what `bench serve` reports as the
INT8 encoder's throughput ratio.

Two measurements, each alternating the two repositories round by round (this machine's timings
drift by 20% over a minute; alternating keeps the drift out of the ratio) and keeping each
side's best round:
- `encoder`: NAME_encoder alone (normalization + ONNX Runtime, run as served: its threads,
  micro-batches and parallel runs) on ready uint8 crops of the images, dynamic batches of
  `batch`: the graph the quantization changed;
- `embed`: NAME_embed's steps in-process (InProcessEmbed: gate, DALI, encoder), batch `batch`;
- with `urls` (an FP32 and an INT8 server), also NAME_embed through Triton gRPC at `concurrency`.

`run_precision_bench` serves both repositories side by side on loopback, the INT8 one built once
(`int8_bench_repo`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from equiprobe.services.contract import MANIFEST, PIXELS, ModelNames
from equiprobe.services.embed_models import InProcessEmbed
from equiprobe.services.model_config import ServingSpec
from equiprobe.services.quantize import Int8Options
from equiprobe.services.runtime import OnnxRunner

from .harness import bench_images, bench_server, through_triton


@dataclass
class RatePair:
    fp32: float  # images/s, best round
    int8: float

    @property
    def ratio(self) -> float:
        return self.int8 / self.fp32


@dataclass
class PrecisionComparison:
    encoder: str
    images: int
    batch: int
    rounds: int
    rates: dict[str, RatePair] = field(default_factory=dict)  # "encoder", "embed" (, "served")
    gflop_per_image: Optional[float] = None  # the FP32 network's, torch's flop counter (None: not a torch network)

    @property
    def ratio(self) -> float:
        """The headline figure: NAME_embed in-process, INT8 images/s over FP32."""
        return self.rates["embed"].ratio

    def as_dict(self) -> dict:
        return {**asdict(self), "ratios": {k: v.ratio for k, v in self.rates.items()}}

    def lines(self) -> list[str]:
        names = {"encoder": "NAME_encoder alone", "embed": "NAME_embed in-process", "served": "NAME_embed via Triton"}
        lines = [f"{names[k]}: INT8 {v.int8:.1f} vs FP32 {v.fp32:.1f} img/s ({v.ratio:.2f}x)"
                 for k, v in self.rates.items()]
        if self.gflop_per_image and "encoder" in self.rates:
            lines[0] += (f"; FP32 {self.rates['encoder'].fp32 * self.gflop_per_image:.0f} GFLOP/s "
                         f"({self.gflop_per_image:.3f} GFLOP per image, batch {self.batch})")
        return lines


def gflop_per_image(encoder: str) -> Optional[float]:
    """GFLOP of one forward pass at the encoder's crop size, counted by torch.utils.flop_counter
    (a multiply-add is 2 FLOPs); None for encoders that are ONNX graphs, not torch networks."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from equiprobe.services.encoders import get_encoder

    spec = get_encoder(encoder)
    network = spec.build(None, False)
    if not isinstance(network, torch.nn.Module):
        return None
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network(torch.zeros(1, *spec.preprocess.output_shape))
    return counter.get_total_flops() / 1e9


def _alternate(calls: dict[str, Callable[[], float]], rounds: int) -> RatePair:
    """Each call (returning images/s) once as a warm-up, then `rounds` rounds of fp32, int8 in
    turn; the best rate of each."""
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, 0.0)
    for _ in range(rounds):
        for side, call in calls.items():
            best[side] = max(best[side], call())
    return RatePair(best["fp32"], best["int8"])


def _timed(run: Callable[[], int]) -> Callable[[], float]:
    def rate() -> float:
        start = time.perf_counter()
        return run() / (time.perf_counter() - start)
    return rate


def int8_vs_fp32(fp32_repo: Path, int8_repo: Path, encoder: str = "squeezenet1_1", images: Optional[list[bytes]] = None,
                 count: int = 128, batch: int = 32, rounds: int = 3, serving: ServingSpec = ServingSpec(),
                 urls: Optional[tuple[str, str]] = None, concurrency: int = 8) -> PrecisionComparison:
    """INT8 vs FP32 throughput of the two repositories' NAME_encoder (and NAME_embed), alternating.

    `images`: encoded uploads (default: `count` JPEG crops of the package photos, bench serve's
    bench_images). `urls`: (FP32 server, INT8 server) gRPC addresses to also measure NAME_embed
    served, at `concurrency` requests in flight."""
    images = images if images is not None else bench_images(count)
    arrays = [np.frombuffer(b, np.uint8) for b in images]
    chunks = [arrays[i:i + batch] for i in range(0, len(arrays), batch)]
    repos = {"fp32": Path(fp32_repo), "int8": Path(int8_repo)}
    embeds = {side: InProcessEmbed(repo, encoder, serving) for side, repo in repos.items()}
    crops = embeds["fp32"].preprocess.run(arrays)
    runners = {side: OnnxRunner.served_encoder(repo / ModelNames(encoder).onnx / "1" / "model.onnx", serving)
               for side, repo in repos.items()}

    def encoder_call(runner) -> Callable[[], float]:
        def run() -> int:
            for i in range(0, len(crops), batch):
                runner({PIXELS: crops[i:i + batch]})
            return len(crops)
        return _timed(run)

    def embed_call(embed) -> Callable[[], float]:
        def run() -> int:
            for chunk in chunks:
                embed(chunk)
            return len(arrays)
        return _timed(run)

    result = PrecisionComparison(encoder, len(images), batch, rounds, gflop_per_image=gflop_per_image(encoder))
    result.rates["encoder"] = _alternate({s: encoder_call(runners[s]) for s in repos}, rounds)
    result.rates["embed"] = _alternate({s: embed_call(embeds[s]) for s in repos}, rounds)
    if urls is not None:
        served = dict(zip(("fp32", "int8"), urls))
        result.rates["served"] = _alternate(
            {s: (lambda url=served[s]: through_triton(url, encoder, images, concurrency).images_per_s) for s in repos},
            rounds)
    return result


def int8_bench_repo(repo: Path, encoder: str, options: Int8Options = Int8Options(), detector: bool = False) -> Path:
    """A benchmark's INT8 repository (`bench serve`'s INT8 side): built once with corpus
    calibration and the cosine gate (with `detector`, the full gate), reused while the services'
    code that rendered it is unchanged, as harness.bench_repo does for FP32."""
    import json

    from equiprobe.services.repository import build_repo, renderer_fingerprint
    from equiprobe.trainer.int8_parity import corpus_int8_build

    path = Path(repo) / ModelNames(encoder).onnx / MANIFEST
    manifest = json.loads(path.read_text()) if path.exists() else {}
    if manifest.get("precision") != "int8" or manifest.get("renderer_sha256") != renderer_fingerprint():
        build_repo(encoder, Path(repo), precision="int8", int8=corpus_int8_build(options, detector))
    return Path(repo)


def run_precision_bench(fp32_repo: Path, int8_repo: Path, encoder: str, images: list[bytes]) -> PrecisionComparison:
    """`bench serve --int8`: int8_vs_fp32 on `images`, NAME_embed served too, the two repositories
    side by side on loopback (the FP32 one the bench repository, the INT8 one int8_bench_repo's)."""
    with bench_server(int8_repo, encoder, build=int8_bench_repo) as int8_server, \
            bench_server(fp32_repo, encoder) as fp32_server:
        return int8_vs_fp32(fp32_repo, int8_repo, encoder, images=images,
                            urls=(fp32_server.config.grpc_url, int8_server.config.grpc_url))
