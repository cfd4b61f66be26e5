"""`equiprobe t2d bench`: the generator's images/s (draws, batched torch rendering, PNG encoding) against
a plain per-image Pillow loop making the same samples from the same draws (alternating repeats, the
best of each kept: the machine is shared), training and feature images/s per architecture, and from
those rates the time of one full-profile epoch and of one full-profile transfer run (an
extrapolation, said so in its output).

The Pillow loop is the obvious way to write the generator: per sample, mirror and affine-warp the
prototype (bilinear, at the same 2x supersampled canvas, then a 2x2 box reduction), Gaussian blur,
unsharp mask, ImageEnhance brightness / contrast / colour, a hue shift in HSV, alpha-composite onto
the background, encode the PNG. Its pixels differ slightly from `render`'s (other filters and
rounding); it is a speed reference, not a second implementation.
"""

from __future__ import annotations

import io
import math
import time
from typing import Callable

import numpy as np

from . import backgrounds as bg
from . import generate, prototypes
from .transforms2d import BASE_FRACTION, SHARPEN_SIGMA, SUPERSAMPLE, parse_transforms


def pillow_sample(proto_rgba, background, values: dict, i: int, size: int) -> bytes:
    from PIL import Image, ImageEnhance, ImageFilter, ImageOps

    values = {name: [float(x) for x in v[i]] for name, v in values.items()}  # Pillow wants plain floats
    obj = proto_rgba
    if values["hflip"][0]:
        obj = ImageOps.mirror(obj)
    if values["vflip"][0]:
        obj = ImageOps.flip(obj)
    big, r = size * SUPERSAMPLE, obj.size[0]
    dx, dy = values["translate"]
    angle, factor = math.radians(values["rotate"][0]), values["scale"][0]
    # canvas pixel (u, v) -> prototype pixel: centre, undo translation, rotation and scale
    k = (r / 2) / (BASE_FRACTION * factor * big / 2)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = big / 2 + dx * big, big / 2 + dy * big
    a, b, d, e = k * cos, k * sin, -k * sin, k * cos
    c, f = r / 2 - a * cx - b * cy, r / 2 - d * cx - e * cy
    layer = obj.transform((big, big), Image.AFFINE, (a, b, c, d, e, f), resample=Image.BILINEAR)
    layer = layer.reduce(SUPERSAMPLE)
    sigma = values["blur"][0] * size
    if sigma > 0:
        layer = layer.filter(ImageFilter.GaussianBlur(sigma))
    if values["sharpen"][0] > 0:
        layer = layer.filter(ImageFilter.UnsharpMask(SHARPEN_SIGMA * size, int(values["sharpen"][0] * 100), 0))
    brightness, contrast, saturation, hue = values["colour"]
    if (brightness, contrast, saturation, hue) != (1.0, 1.0, 1.0, 0.0):
        alpha = layer.getchannel("A")
        rgb = layer.convert("RGB")
        rgb = ImageEnhance.Brightness(rgb).enhance(brightness)
        rgb = ImageEnhance.Contrast(rgb).enhance(contrast)
        rgb = ImageEnhance.Color(rgb).enhance(saturation)
        h, s, v = rgb.convert("HSV").split()
        h = h.point(lambda x: int(x + hue * 256) % 256)
        rgb = Image.merge("HSV", (h, s, v)).convert("RGB")
        layer = rgb.convert("RGBA")
        layer.putalpha(alpha)
    canvas = Image.fromarray(background).convert("RGBA")
    out = Image.alpha_composite(canvas, layer).convert("RGB")
    buffer = io.BytesIO()
    out.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def pillow_loop(spec: generate.DatasetSpec, split: str, draws: generate.Draws) -> list[bytes]:
    from PIL import Image

    res = generate.prototype_resolution(spec.size)
    premultiplied = prototypes.prototypes(res)[list(spec.objects)]
    alpha = premultiplied[:, 3:]
    straight = np.concatenate([premultiplied[:, :3] / np.maximum(alpha, 1e-6), alpha], 1)
    protos = [Image.fromarray((p.transpose(1, 2, 0).clip(0, 1) * 255).round().astype(np.uint8), "RGBA")
              for p in straight]
    bank = bg.bank(split, spec.size, spec.banks[split])
    return [pillow_sample(protos[draws.labels[i]], bank[draws.backgrounds[i]], draws.values, i, spec.size)
            for i in range(len(draws))]


def generator_path(spec: generate.DatasetSpec, split: str, draws: generate.Draws) -> list[bytes]:
    """What `t2d generate` does per batch: render, then PNG-encode in a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(generate.png, generate.render_draws(spec, split, draws)))


def run(images: int, size: int, transforms: str, train_images: int, archs: list[str], batch_size: int, seed: int,
        repeats: int = 3, log: Callable[[str], None] = print) -> dict:
    from .profiles import PROFILES
    from .training import features, train_model

    if images < 1 or train_images < 2 or repeats < 1:
        raise ValueError("--images and --repeats must be at least 1, --train-images at least 2")
    spec = generate.DatasetSpec(objects=tuple(prototypes.OBJECT_SETS["paper"]), transforms=parse_transforms(transforms),
                                size=size, counts={"train": images, "val": 0, "test": 0}, seed=seed)
    draws = generate.draw(spec, "train")
    generator_path(spec, "train", draws.take(slice(0, 16)))  # warm-up: prototypes, bank, torch
    pillow_loop(spec, "train", draws.take(slice(0, 16)))
    paths = {"t2d generate (batched torch render + threaded PNG)": generator_path,
             "plain per-image Pillow loop": pillow_loop}
    runs: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(repeats):  # alternating, so that both see the same load; the best of each is kept
        for name, path in paths.items():
            start = time.perf_counter()
            path(spec, "train", draws)
            runs[name].append(images / (time.perf_counter() - start))
    timings = {name: max(rates) for name, rates in runs.items()}
    for name, rates in runs.items():
        log(f"{name}: {timings[name]:.0f} images/s (best of {repeats}: {', '.join(f'{r:.0f}' for r in rates)})")
    names = list(timings)
    ratio = timings[names[0]] / timings[names[1]]
    log(f"ratio t2d generate / Pillow loop: {ratio:.2f}x")
    train_spec = generate.DatasetSpec(objects=spec.objects, transforms=spec.transforms, size=size,
                                      counts={"train": train_images, "val": 0, "test": 0}, seed=seed + 1)
    x, y = generate.images(train_spec, "train")
    training, inference, estimates = {}, {}, {}
    full = PROFILES["full"]
    rendered = full.train + full.val + 4 * (full.target_train + full.target_test)
    render_rate = timings[names[0]]
    for arch in archs:
        result = train_model(arch, x, y, len(spec.objects), epochs=1, batch_size=batch_size, lr=1e-3,
                             weight_decay=0.0, seed=seed)
        training[arch] = result.images_per_second
        start = time.perf_counter()
        features(result.model, x)
        inference[arch] = len(x) / (time.perf_counter() - start)
        # One full-profile transfer run, extrapolated from these rates (not run end to end here):
        # rendering, 50 epochs on 50,000 images (+ validation passes), features of 4 targets.
        seconds = (rendered / render_rate + full.epochs * full.train / training[arch]
                   + (full.epochs * full.val + 4 * (full.target_train + full.target_test)) / inference[arch])
        estimates[arch] = {"epoch_seconds": full.train / training[arch] + full.val / inference[arch],
                           "transfer_run_seconds": seconds}
        log(f"training {arch} (batch {batch_size}, {size} px): {training[arch]:.0f} images/s; features "
            f"{inference[arch]:.0f} images/s; a full-profile epoch ~{estimates[arch]['epoch_seconds'] / 60:.1f} min, "
            f"a full-profile transfer run ~{seconds / 3600:.1f} h (extrapolated)")
    import torch

    return {"images": images, "size": size, "transforms": list(spec.transforms[0]),
            "generate_images_per_second": {n: round(v, 1) for n, v in timings.items()}, "ratio": round(ratio, 2),
            "repeats": {n: [round(r, 1) for r in rates] for n, rates in runs.items()},
            "train_images_per_second": {a: round(v, 1) for a, v in training.items()},
            "feature_images_per_second": {a: round(v, 1) for a, v in inference.items()},
            "full_profile_estimate": estimates,
            "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads()}
