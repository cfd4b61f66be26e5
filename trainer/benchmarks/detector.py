"""`equiprobe bench detector`: what the detector costs.

In-process, what FEATURES cost it: its CPU ms per image before and after, side by side.
Before: NAME_encoder exported without taps and an MLP probe on the embedding alone; after: the
served encoder (EMBEDDING and FEATURES from one pass) and an MLP probe on both. The steps in
front (gate, DALI decode and resize) are the same on both sides and are measured once, so the
totals are the detector's whole per-image CPU. Rounds alternate before/after on the same crops;
each side's figure is its cheapest round (process CPU time, both cores counted).

Served: NAME_detector against NAME_embed alone (or against another encoder's detector) through
gRPC on a loopback server over a repository with a deployed detector.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import numpy as np

from .harness import bench_server, fastest_alternating, through_triton


def _cpu_ms(run, items: int) -> float:
    start = time.process_time()
    run()
    return (time.process_time() - start) * 1000 / items


def _probe_session(dim: int, tmp: Path, name: str, hidden: int = 2048, classes: int = 31):
    """An MLP probe of the study's shape (one 2048 hidden layer) on `dim` inputs, as ONNX on one thread."""
    import torch

    from equiprobe.services.runtime import ort_session
    from equiprobe.trainer.probes import Probe, ProbeConfig

    probe = Probe(dim, classes, ProbeConfig(kind="mlp", hidden=hidden), np.zeros(dim, np.float32),
                  np.ones(dim, np.float32)).eval()
    path = tmp / f"{name}.onnx"
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        torch.onnx.export(probe, (torch.zeros(2, dim),), str(path), input_names=["x"], output_names=["y"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},), external_data=False,
                          dynamo=True, verbose=False)
    return ort_session(path, threads=1)


def features_cost(encoder: str, images: list[bytes], rounds: int = 4) -> dict:
    from equiprobe.services.encoders import create_encoder, get_encoder
    from equiprobe.services.export import export_encoder
    from equiprobe.services.model_config import ServingSpec
    from equiprobe.services.onnx_wrappers import wrap_for_crops
    from equiprobe.services.pipelines import CpuPreprocessor, serialize_preprocess
    from equiprobe.services.runtime import OnnxRunner
    from equiprobe.services.uploads import admit

    spec = get_encoder(encoder)
    if spec.features is None:
        raise ValueError(f"encoder {encoder} taps no early blocks: it serves no FEATURES")
    serving = ServingSpec()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        encoders = {}
        for side, side_spec in (("before", replace(spec, features=None)), ("after", spec)):
            export = export_encoder(side_spec, create_encoder(encoder), tmp / f"{side}_exported.onnx")
            wrap_for_crops(export.path, tmp / f"{side}.onnx", spec.preprocess)
            encoders[side] = OnnxRunner.served_encoder(tmp / f"{side}.onnx", serving)
        serialize_preprocess(spec.preprocess, tmp / "pre.dali", "cpu", serving.max_batch_size, serving.dali_threads)
        pre = CpuPreprocessor(tmp / "pre.dali", serving.max_batch_size, serving.dali_threads)
        probes = {"before": _probe_session(spec.dim, tmp, "before"),
                  "after": _probe_session(spec.dim + spec.feature_dim, tmp, "after")}
        arrays = [np.frombuffer(d, np.uint8) for d in images]
        batch = serving.max_batch_size

        def front():
            checked = [np.frombuffer(admit(a.tobytes()).data, np.uint8) for a in arrays]
            return np.concatenate([pre.run(checked[i:i + batch]) for i in range(0, len(checked), batch)])

        crops = front()
        inputs = {side: np.random.default_rng(0).normal(size=(len(images), s.get_inputs()[0].shape[1]))
                  .astype(np.float32) for side, s in probes.items()}
        best = {f"{part}_{side}": float("inf") for part in ("encoder", "probe") for side in ("before", "after")}
        best["front"] = float("inf")
        for side in ("before", "after"):  # warm-up
            encoders[side]({"PIXELS": crops})
            probes[side].run(None, {"x": inputs[side]})
        for _ in range(rounds):
            best["front"] = min(best["front"], _cpu_ms(front, len(images)))
            for side in ("before", "after"):
                best[f"encoder_{side}"] = min(best[f"encoder_{side}"],
                                              _cpu_ms(lambda: encoders[side]({"PIXELS": crops}), len(images)))
                best[f"probe_{side}"] = min(best[f"probe_{side}"],
                                            _cpu_ms(lambda: probes[side].run(None, {"x": inputs[side]}), len(images)))
    total = {side: best["front"] + best[f"encoder_{side}"] + best[f"probe_{side}"] for side in ("before", "after")}
    return {"encoder": encoder, "images": len(images), "features_dim": spec.feature_dim,
            "rows": [{"stage": "gate + DALI preprocess", "before": best["front"], "after": best["front"]},
                     {"stage": "NAME_encoder", "before": best["encoder_before"], "after": best["encoder_after"]},
                     {"stage": "NAME_probe (MLP 2048)", "before": best["probe_before"], "after": best["probe_after"]},
                     {"stage": "detector, total", "before": total["before"], "after": total["after"]}],
            "ratio": total["after"] / total["before"]}


def detector_vs_baseline(url: str, encoder: str, images: list[bytes], levels=(1, 16), repeats: int = 2,
                         baseline: tuple[str, str] = ("", "embed")) -> list[dict]:
    """NAME_detector against `baseline` ((encoder, model); default NAME_embed alone: the probe's cost;
    or another detector, e.g. a single encoder's against a concatenated one), both through gRPC, at
    each concurrency, alternating `repeats` times, each keeping its fastest pass."""
    sides = {"detector": (encoder, "detector"), "baseline": (baseline[0] or encoder, baseline[1])}
    rows = []
    for level in levels:
        best = fastest_alternating({side: (lambda name=name, model=model: through_triton(url, name, images, level, model))
                                    for side, (name, model) in sides.items()}, repeats)
        rows.append({"level": level, **{side: m.as_dict() for side, m in best.items()},
                     "throughput_ratio": best["detector"].images_per_s / best["baseline"].images_per_s})
    return rows


def run_detector_bench(repo: Path, encoder: str, images: list[bytes], versus: Optional[str] = None,
                       features_images: int = 64) -> dict:
    """features_cost of every part of `encoder` that taps FEATURES, on the first `features_images`
    images; then detector_vs_baseline on a loopback server over `repo` (used as it is), against
    `versus`'s NAME_detector or else NAME_embed. A ValueError when `repo` lacks a detector."""
    from equiprobe.services.contract import DetectorNames, parts_of
    from equiprobe.services.encoders import get_encoder

    for name in [encoder] + ([versus] if versus else []):
        detector = DetectorNames(name).detector
        if not (Path(repo) / detector / "config.pbtxt").exists():
            raise ValueError(f"no {detector} in {repo}: run `make demo`, or train a probe and "
                             f"`equiprobe deploy --probe DIR --repo {repo}`")
    costs = [features_cost(part, images[:features_images]) for part in parts_of(encoder)
             if get_encoder(part).features is not None]
    baseline = (versus, "detector") if versus else (encoder, "embed")
    with bench_server(repo, encoder, build=None) as server:
        rows = detector_vs_baseline(server.config.grpc_url, encoder, images, baseline=baseline)
    return {"features_cost": costs, "served": rows}
