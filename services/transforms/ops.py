"""DALI building blocks the catalog's transformations share (CPU and GPU alike).

Everything here is plain DALI graph code: no python_function, so it serializes for Triton's
dali backend. Random patterns (noise) come from a hash of pixel coordinates and a seed that is
one of the transform's parameters: DALI's own noise operators depend on a sample's position in
the batch, which would break "same image, same seed, same result".
"""

from __future__ import annotations

import numpy as np
from nvidia.dali import fn, math, types

F, U8, U32, I32 = types.FLOAT, types.UINT8, types.UINT32, types.INT32


def u32(value: int):
    return types.Constant(value, dtype=U32)


def to_u8(x):
    """Clamp a float node to 0..255 and cast back to uint8."""
    return fn.cast(math.clamp(x, 0.0, 255.0), dtype=U8)


def blend(a, b, alpha):
    """(1 - alpha) * a + alpha * b, as uint8."""
    return to_u8(fn.cast(a, dtype=F) * (1.0 - alpha) + fn.cast(b, dtype=F) * alpha)


def _grids(size: int, channels: int):
    # Small broadcastable index grids keep the serialized pipeline small (~28 bytes/element).
    yy = types.Constant(np.arange(size, dtype=np.uint32).reshape(size, 1, 1) * (size * channels), dtype=U32)
    xx = types.Constant(np.arange(size, dtype=np.uint32).reshape(1, size, 1) * channels, dtype=U32)
    cc = types.Constant(np.arange(channels, dtype=np.uint32).reshape(1, 1, channels), dtype=U32)
    return yy + xx + cc


def _mix(h):  # "lowbias32" integer hash
    h = (h ^ (h >> u32(16))) * u32(0x7FEB352D)
    h = (h ^ (h >> u32(15))) * u32(0x846CA68B)
    return h ^ (h >> u32(16))


def hash_field(seed, size: int, channels: int):
    """uint32 pseudo-random field [size, size, channels] from a per-sample seed (< 2**24)."""
    seed = fn.cast(seed, dtype=U32)
    return _mix(_grids(size, channels) ^ _mix(seed * u32(0x9E3779B9) + u32(0x632BE5AB)))


def uniform_field(seed, size: int, channels: int):
    return (hash_field(seed, size, channels) >> u32(8)) * (1.0 / 16777216.0)


def gaussian_field(seed, size: int):
    """Standard normal noise by Box-Muller on two 16-bit halves of the hash."""
    h = hash_field(seed, size, 3)
    u1 = ((h >> u32(16)) + 0.5) * (1.0 / 65536.0)
    u2 = (h & u32(0xFFFF)) * (1.0 / 65536.0)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(6.2831853 * u2)


def radial_distance(size: int):
    """Distance from the centre, normalized to 1 at the corners, as an [size, size, 1] node."""
    c = (size - 1) / 2.0
    ys = types.Constant(((np.arange(size) - c) / (c * np.sqrt(2))).astype(np.float32).reshape(size, 1, 1) ** 2)
    xs = types.Constant(((np.arange(size) - c) / (c * np.sqrt(2))).astype(np.float32).reshape(1, size, 1) ** 2)
    return math.sqrt(ys + xs)


def place_overlay(image, rgba, y, x, opacity, size: int):
    """Alpha-blend an RGBA bitmap with its top-left corner at (y, x); parts off the canvas are cut."""
    canvas = fn.slice(rgba, start=fn.cast(fn.stack(-y, -x), dtype=I32), shape=[size, size], axes=[0, 1],
                      out_of_bounds_policy="pad", fill_values=0)
    alpha = canvas[:, :, 3:4] * (opacity / 255.0)
    return to_u8(fn.cast(image, dtype=F) * (1.0 - alpha) + canvas[:, :, 0:3] * alpha)


def colour_statistics_transfer(image, reference, strength):
    """Move the image's per-channel mean and spread to the reference's (Reinhard-style)."""
    x, r = fn.cast(image, dtype=F), fn.cast(reference, dtype=F)
    mx = fn.reductions.mean(x, axes=[0, 1], keep_dims=True)
    sx = fn.reductions.std_dev(x, mx, axes=[0, 1], keep_dims=True)
    mr = fn.reductions.mean(r, axes=[0, 1], keep_dims=True)
    sr = fn.reductions.std_dev(r, mr, axes=[0, 1], keep_dims=True)
    moved = (x - mx) / math.max(sx, 1.0) * sr + mr
    return x * (1.0 - strength) + moved * strength


def high_pass(gray_u8, sigma: float):
    """Detail layer of a single-channel image: it minus its gaussian blur (float, HW1)."""
    return fn.cast(gray_u8, dtype=F) - fn.gaussian_blur(gray_u8, sigma=sigma, dtype=F)


def gray(image):
    return fn.color_space_conversion(image, image_type=types.RGB, output_type=types.GRAY)
