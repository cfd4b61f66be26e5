"""The groups catalog: the symmetries of the square canvas, for measuring invariance.

    identity, rot90, rot180, rot270   the rotation group C4 (counter-clockwise, numpy's np.rot90)
    identity, hflip                   the flip group {e, h} (left-right, np.fliplr)

Each is an exact permutation of the canvas pixels built from `fn.transpose` and `fn.flip`:
no interpolation (unlike the fine catalog's `rotate`) and no random parameters, so a version is
bit for bit np.rot90 / np.fliplr of the identity canvas. The fine catalog avoids plain flips
(a person cannot name them from the image); here they are the point: with whole finite groups,
the invariance metrics (trainer/invariance.py) can average over the group exactly.

Every transformation is its own class (a 5-way task), so each category is its own name;
`family` and `GROUPS` say which group a row belongs to.
"""

from __future__ import annotations

from nvidia.dali import fn

from .spec import Transform

VERSION = "groups-1"

# Group name -> its elements, identity first; the catalog holds the union, identity once.
GROUPS: dict[str, tuple[str, ...]] = {
    "rotation": ("identity", "rot90", "rot180", "rot270"),
    "flip": ("identity", "hflip"),
}


# -- DALI implementations -----------------------------------------------------------------------
# The canvas is HWC. fn.flip's `horizontal` defaults to 1, so both axes are always named; the
# transpose keeps the "HWC" layout label so the flips after it act on the right axes.

def identity(img, p, aux):
    return img


def _transpose(img):
    return fn.transpose(img, perm=[1, 0, 2], transpose_layout=False)


def rot90(img, p, aux):
    """Counter-clockwise: the transpose flipped upside down."""
    return fn.flip(_transpose(img), horizontal=0, vertical=1)


def rot180(img, p, aux):
    return fn.flip(img, horizontal=1, vertical=1)


def rot270(img, p, aux):
    """Clockwise: the transpose flipped left to right."""
    return fn.flip(_transpose(img), horizontal=1, vertical=0)


def hflip(img, p, aux):
    return fn.flip(img, horizontal=1, vertical=0)


# Ids 200+ keep them apart from the fine (0+) and general (100+) catalogs' ids.
T = Transform
TRANSFORMS: tuple[Transform, ...] = (
    T(200, "identity", "identity", (), identity),
    T(201, "rot90", "rot90", (), rot90, family="rotation"),
    T(202, "rot180", "rot180", (), rot180, family="rotation"),
    T(203, "rot270", "rot270", (), rot270, family="rotation"),
    T(204, "hflip", "hflip", (), hflip, family="flip"),
)
