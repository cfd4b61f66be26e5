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
    """Every row with its id written here, never derived from its position: a row inserted
    anywhere leaves every other row's id, parameters and fingerprint as they were. Ids 100+ keep
    them apart from the fine catalog's in parameter seeding."""
    f = {t.name: t for t in fine.TRANSFORMS}
    rows: list[Transform] = []

    def like(tid, name, split, new_name=None, params=None, aux=None):
        t = f[name]
        rows.append(Transform(tid, new_name or name, t.category, params or t.params, t.apply,
                              aux=t.aux if aux is None else aux, split=split, family=t.family))

    def style(tid, ref, split):
        rows.append(Transform(tid, f"style_{ref}", "style", _style_params(), fixed_style,
                              aux=(("STYLE_REF", _fixed_reference(ref)),), split=split, family="style"))

    like(100, "identity", "train")
    # Seen in training (28 sub-transformations besides Identity).
    for tid, name in ((101, "hue_shift"), (102, "saturate"), (103, "grayscale"), (104, "tint"), (105, "invert"),
                      (106, "posterize"), (107, "brighten"), (108, "contrast"), (109, "vignette"),
                      (110, "gaussian_blur"), (111, "motion_blur"), (112, "gaussian_noise"),
                      (113, "salt_and_pepper"), (114, "pixelate"), (115, "jpeg"), (116, "rotate"),
                      (117, "crop_zoom"), (118, "wave"), (119, "perspective"), (120, "border"),
                      (121, "text_overlay"), (122, "icon_overlay")):
        like(tid, name, "train")
    for tid, ref in ((123, "brick"), (124, "grass"), (125, "gravel"), (126, "hubble_deep_field"),
                     (127, "immunohistochemistry"), (128, "coins")):
        style(tid, ref, "train")
    # Held out for the test set only (18).
    for tid, name in ((129, "sharpen"), (130, "solarize"), (131, "darken"), (132, "defocus_blur"),
                      (133, "shot_noise"), (134, "sphere"), (135, "grid_mask")):
        like(tid, name, "test")
    rows.append(Transform(136, "speckle_noise", "noise", (SEED, _p("sigma", 0.25, 0.5)), speckle_noise,
                          split="test", family="noise"))
    rows.append(Transform(137, "downscale", "resolution", (_p("side", 40, 72, True),), downscale, split="test"))
    like(138, "text_overlay", "test", "text_overlay_unseen_fonts", params=fine.text_params(len(assets.HELD_OUT_FONTS)),
         aux=(("TEXT", fine._text(assets.HELD_OUT_FONTS)),))
    like(139, "icon_overlay", "test", "icon_overlay_unseen_icons", params=fine.icon_params(len(assets.HELD_OUT_ICONS)),
         aux=(("ICON", fine._icon(assets.HELD_OUT_ICONS)),))
    for tid, ref in ((140, "retina"), (141, "china"), (142, "flower"), (143, "moon"), (144, "rocket"),
                     (145, "colorwheel"), (146, "camera")):
        style(tid, ref, "test")
    _check_styles(rows)
    return tuple(rows)


def _check_styles(rows: list[Transform]) -> None:
    """The style rows are the assets' references, seen and held out as assets.py says."""
    for split, refs in (("train", assets.SEEN_STYLES), ("test", assets.HELD_OUT_STYLES)):
        declared = [t.name[len("style_"):] for t in rows if t.category == "style" and t.split == split
                    and t.apply is fixed_style]
        if sorted(declared) != sorted(refs):
            raise ValueError(f"general catalog: {split} style rows {declared} are not the assets' {list(refs)}")


TRANSFORMS = _build()
