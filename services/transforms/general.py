"""The generalization catalog: 9 categories + Identity = 10 classes.

A probe is trained on the "train" sub-transformations only and tested on all of them; the
"test" ones never appear in training. Held out: noise types (shot, speckle), 7 of the 13
style references, fonts, icons, and one sub-transformation of every other category. Each
style reference is its own sub-transformation, so accuracy can be reported per style, seen
and unseen (the study's Table 2).
"""

from __future__ import annotations

from nvidia.dali import fn, types

from . import assets, fine, ops
from .assets import CANVAS
from .fine import SEED, _p
from .spec import Transform

VERSION = "general-1"
CLASSES = ("identity", "filtering", "colour quantizing", "tone", "blur", "noise", "resolution",
           "geometry", "occlusion", "style")


# Sub-transformations the fine catalog does not have.

def speckle_noise(img, p, aux):
    """Multiplicative noise: x * (1 + sigma * n)."""
    x = fn.cast(img, dtype=types.FLOAT)
    return ops.to_u8(x + x * ops.gaussian_field(p[0], CANVAS) * p[1])


def downscale(img, p, aux):
    """Resolution loss without blockiness: shrink, then enlarge with linear interpolation."""
    small = fn.resize(img, size=fn.stack(p[0], p[0]), interp_type=types.INTERP_LINEAR, antialias=True)
    return fn.resize(small, size=[CANVAS, CANVAS], interp_type=types.INTERP_LINEAR)


def fixed_style(img, p, aux):
    """A fine-catalog reference style whose reference is fixed by the sub-transformation."""
    return fine.reference_style(img, p, aux)


def _fixed_reference(name):
    def render(p):
        return assets.style_reference(name)
    return render


def _style_params():
    # The reference is fixed; p[0] is unused so the recipe indices match reference_style's.
    return (_p("unused", 0, 1, True),) + fine.style_params(1)[1:]


def _build() -> tuple[Transform, ...]:
    f = {t.name: t for t in fine.TRANSFORMS}
    rows: list[tuple] = []  # (name, category, params, apply, split, family, aux)

    def like(name, split, new_name=None, category=None, params=None, aux=None, family=None):
        t = f[name]
        rows.append((new_name or name, category or t.category, params or t.params, t.apply, split,
                     family or t.family, t.aux if aux is None else aux))

    like("identity", "train")
    # Seen in training (28 sub-transformations besides Identity).
    for name in ("hue_shift", "saturate", "grayscale", "tint", "invert", "posterize", "brighten", "contrast",
                 "vignette", "gaussian_blur", "motion_blur", "gaussian_noise", "salt_and_pepper", "pixelate",
                 "jpeg", "rotate", "crop_zoom", "wave", "perspective", "border"):
        like(name, "train")
    like("text_overlay", "train")
    like("icon_overlay", "train")
    for ref in assets.SEEN_STYLES:
        rows.append((f"style_{ref}", "style", _style_params(), fixed_style, "train", "style",
                     (("STYLE_REF", _fixed_reference(ref)),)))
    # Held out for the test set only (18).
    for name in ("sharpen", "solarize", "darken", "defocus_blur", "shot_noise", "sphere", "grid_mask"):
        like(name, "test")
    rows.append(("speckle_noise", "noise", (SEED, _p("sigma", 0.25, 0.5)), speckle_noise, "test", "noise", ()))
    rows.append(("downscale", "resolution", (_p("side", 40, 72, True),), downscale, "test", None, ()))
    like("text_overlay", "test", "text_overlay_unseen_fonts", params=fine.text_params(len(assets.HELD_OUT_FONTS)),
         aux=(("TEXT", fine._text(assets.HELD_OUT_FONTS)),))
    like("icon_overlay", "test", "icon_overlay_unseen_icons", params=fine.icon_params(len(assets.HELD_OUT_ICONS)),
         aux=(("ICON", fine._icon(assets.HELD_OUT_ICONS)),))
    for ref in assets.HELD_OUT_STYLES:
        rows.append((f"style_{ref}", "style", _style_params(), fixed_style, "test", "style",
                     (("STYLE_REF", _fixed_reference(ref)),)))
    # Ids 100+ keep them apart from the fine catalog's in parameter seeding.
    return tuple(Transform(100 + i, name, category, params, apply, aux=aux, split=split, family=family)
                 for i, (name, category, params, apply, split, family, aux) in enumerate(rows))


TRANSFORMS = _build()
