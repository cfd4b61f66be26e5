"""The built-in corpus: distinct colour source images that installed Debian and Python packages ship.

Real uploads are mostly photographs, with screenshots and illustrations mixed in, so the corpus takes
the photographs of desktop-wallpaper packages and of OpenCV's samples, the illustrations those
packages ship too, and a capped share of the screenshots and diagrams of OpenCV's HTML tutorials;
and the everyday photographs (animals, monuments, objects, places) of educational and desktop
packages: GCompris's activities (inside its Qt resource files), Scratch's backgrounds, Kalzium's
lab equipment, Tux Paint's templates, GNOME's user pictures and LXQt's wallpapers.
`build_manifest()` scans the packages once; its output is committed as corpus_manifest.json and the
dataset reads only that file, so every machine with the packages cuts the same crops.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import zlib
from collections import OrderedDict
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from equiprobe.clients.records import Dataset, Record

DEBIAN_PACKAGES = ("opencv-doc", "mate-backgrounds", "gnome-backgrounds", "plasma-workspace-wallpapers",
                   "ukui-wallpapers", "lomiri-wallpapers", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04",
                   "sway-backgrounds", "palapeli-data", "gcompris-qt-data", "scratch", "kalzium-data", "tuxpaint-data",
                   "gnome-control-center-data", "lxqt-themes")
# Packages that ship other images too (sprites, icons, flags, maps, colouring pages, theme parts): only these paths.
FOLDERS = {"scratch": re.compile(r"/scratch/Media/Backgrounds/"), "kalzium-data": re.compile(r"/kalzium/data/toolpics/"),
           "tuxpaint-data": re.compile(r"/tuxpaint/templates/|/tuxpaint/starters/(?:reef|skyline-sf-dusk)-back\."),
           "gnome-control-center-data": re.compile(r"/pixmaps/faces/"),
           "lxqt-themes": re.compile(r"/lxqt/wallpapers/")}
# Packages whose images are members of Qt resource files (.rcc), written FILE.rcc:/MEMBER: GCompris's
# activities with photographs (its paintings, cartoons, cut-out puzzle pieces and drawings are left out;
# of "details", only the whole pictures, not the small cut-out details).
RCC_FOLDERS = {"gcompris-qt-data": re.compile(
    r"/activities/(?:categorization/resource/images/|clickgame/resource/sea\d|details/resource/image/[^/]+_background\."
    r"|erase/resource/|explore_\w+/resource/|louis-braille/resource/)")}
RCC = ".rcc:/"
# Where a package installs its source tree's root, for copyright globs that name a folder with
# subfolders (scratch: "Files: Media/*", installed as /usr/share/scratch/Media/Backgrounds/...).
SOURCE_ROOTS = {"scratch": "/usr/share/scratch/"}
# Packages added after the first corpus, by generation: their entries sort after the earlier ones, so a
# later package's picture that joins an earlier group (by hash) never renames it or moves it to
# another split (a group is named after its first entry).
GENERATION = dict.fromkeys(("gcompris-qt-data", "scratch", "kalzium-data", "tuxpaint-data",
                            "gnome-control-center-data", "lxqt-themes"), 1)
# (distribution, import name, folder): sample images stored inside the wheels, readable offline.
PYTHON_SOURCES = (("scikit-image", "skimage", "data"), ("scikit-learn", "sklearn", "datasets/images"),
                  ("matplotlib", "matplotlib", "mpl-data/sample_data"))
KINDS = ("photograph", "screenshot", "illustration")
MANIFEST = Path(__file__).with_name("corpus_manifest.json")
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Not uploads: icons, previews of other files, handbook screenshots, palapeli's tiling textures.
SKIP = re.compile(r"/icons/|screenshot|thumbnail|/previews?/|/doc/HTML/|/palapeli/backgrounds/", re.I)
HTML = "/usr/share/doc/opencv-doc/opencv4/html/"
MIN_SIDE = 200  # shorter side: smaller images give no 224-pixel crop without heavy upscaling
# Mean chroma (max - min channel, of 255) of a thumbnail under which an image is grayscale: gray
# JPEGs measure under 2 (chroma noise), the faintest tinted photographs here over 5.
GRAY_CHROMA = 4.0
# Colour tutorial images kept: the pages hold ~150 photographs (most with drawings on them) and ~270
# screenshots and diagrams; the caps keep the packages' own photographs a large share.
HTML_PHOTOGRAPHS, HTML_RENDERED = 90, 60
# Of 256 difference-hash bits: resizes, re-encodes, crops of a few percent and the figures that draw
# on a sample image stay within it; unrelated pictures differ in ~128.
HASH_DISTANCE = 40
MAX_SIDE = 1024  # longest side of the cached copies that crops are cut from
SPLITS = ((0.60, "train"), (0.75, "validation"), (1.0, "test"))  # cumulative shares of source groups
# Where the pixel rule of kind_of errs (smooth bokeh or sky photographs, grainy renders, a painting,
# synthetic test images), checked by eye.
REVIEWED = {
    **dict.fromkeys(("lomiri-bridge-by-sander-klootwijk", "lomiri-free-by-peter-nerlich", "mate-aqua",
                     "lomiri-greentock-by-peter-nerlich", "mate-freshflower", "mate-yellowflower", "plasma-milkyway",
                     "plasma-summer-1am", "skimage-rocket", "opencv-pca-test1"), "photograph"),
    **dict.fromkeys(("gnome-licorice-l", "gnome-wood-d", "gnome-wood-l", "mate-ubuntu-mate-cold-no-logo",
                     "plasma-autumn", "plasma-patak", "plasma-patak-dark", "plasma-safelanding", "ukui-string",
                     "opencv-input", "opencv-pic2", "opencv-pic4", "opencv-starry-night"), "illustration"),
    "opencv-stanford": "screenshot",
    # Issue 23's packages: the paintings among GCompris's pictures, LXQt's and Scratch's renders, and
    # photographs with smooth sky or bokeh.
    **dict.fromkeys((*(f"gcompris-details-{name}-background" for name in (
        "eglise-dauvers-sur-oise", "gogh4", "portraitofperetanguy", "van-gogh-the-night-cafe", "vincentvangogh0012",
        "vincentvangogh0013", "vincentvangogh0019", "vincentvangoghbridge")),
        "gcompris-louis-braille-louis", "gcompris-louis-braille-chart", "gcompris-louis-braille-night-printing",
        "lxqt-plasma-arch", "scratch-brick-wall1"), "illustration"),
    **dict.fromkeys(("lxqt-butterfly-kenneth-wimer", "lxqt-cloud", "scratch-boardwalk"), "photograph")}
# Folders checked by eye to hold only photographs, whose white studio backdrops, skies and bokeh fool
# the pixel rule; REVIEWED names their exceptions.
PHOTOGRAPH_FOLDERS = re.compile(r"/gcompris-qt/rcc/|/pixmaps/faces/|/tuxpaint/templates/")


class CorpusError(ValueError):
    """The corpus cannot be read; the message names the packages to install."""


# -- measuring an image -------------------------------------------------------------------------

def _rgb(image: Image.Image) -> Image.Image:
    """RGB, with transparency flattened onto white as a viewer shows it."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    return image.convert("RGB")


def thumbnail(image: Image.Image, side: int = 256) -> np.ndarray:
    small = _rgb(image)
    small.thumbnail((side, side), Image.BOX)
    return np.asarray(small, np.float32)


def is_grayscale(rgb: np.ndarray) -> bool:
    return float((rgb.max(-1) - rgb.min(-1)).mean()) < GRAY_CHROMA


def kind_of(image: Image.Image, rgb: np.ndarray, path: str) -> str:
    """A camera in the EXIF data makes a photograph. Otherwise photographs have texture everywhere
    (detail, sensor noise) where renders have flat or smoothly shaded areas: a photograph has few
    thumbnail pixels with no step (<= 1 of 255) to a neighbour and few pixels in a full-resolution
    512 px centre crop without second-derivative texture (|Laplacian| <= 2): under 40% and 60% for
    the packages of photographs and wallpapers, under 35% and 35% on the tutorial pages, which are
    mostly renders. A rendered tutorial image that is mostly neutral (window chrome, text, plots on
    white) is a screenshot; other rendered images are illustrations."""
    exif = image.getexif()
    if exif.get(0x010F) and exif.get_ifd(0x8769).get(0x829A):  # camera make and exposure time
        return "photograph"
    gray = rgb.mean(-1)
    step = np.maximum(np.abs(np.diff(gray, axis=0))[:, :-1], np.abs(np.diff(gray, axis=1))[:-1])
    w, h = image.size
    s = min(512, w, h)
    a = np.asarray(_rgb(image.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2))), np.float32)
    laplace = np.abs(4 * a[1:-1, 1:-1] - a[:-2, 1:-1] - a[2:, 1:-1] - a[1:-1, :-2] - a[1:-1, 2:]).max(-1)
    flat_max, smooth_max = (0.35, 0.35) if path.startswith(HTML) else (0.4, 0.6)
    if (step <= 1).mean() < flat_max and (laplace <= 2).mean() < smooth_max:
        return "photograph"
    neutral = ((rgb.max(-1) - rgb.min(-1)) < 16).mean()
    return "screenshot" if path.startswith(HTML) and neutral > 0.6 else "illustration"


def dhash(rgb: np.ndarray) -> np.ndarray | None:
    """256-bit difference hash (is each pixel of a 17x16 gray thumbnail brighter than its left
    neighbour?), or None for images too flat to hash (mean step under 2 of 255: plain colours)."""
    small = np.asarray(Image.fromarray(rgb.mean(-1).astype(np.uint8)).resize((17, 16), Image.BOX), np.int16)
    step = small[:, 1:] - small[:, :-1]
    return np.packbits(step > 0) if np.abs(step).mean() >= 2 else None


# -- package facts --------------------------------------------------------------------------------

def _dpkg(*args: str) -> str:
    return subprocess.run(["dpkg-query", *args], capture_output=True, text=True).stdout


def dep5_licence(text: str, path: str) -> str:
    """License of the last Files stanza (DEP-5: the last match wins) whose glob matches the path's
    tail, or a relative path (from the source tree's root) as a whole; a glob naming the file itself wins
    over wildcards, also when its folder differs (lomiri lists 16.04/NAME.jpg, installed as
    /usr/share/backgrounds/NAME.jpg)."""
    parts, name, found, named = path.split("/"), path.rsplit("/", 1)[-1], "", ""
    for stanza in re.split(r"\n[ \t]*\n", text):
        files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", stanza, re.M)
        licence_line = re.search(r"^License:[ \t]*(\S.*)", stanza, re.M)
        for glob in (files.group(1).split() if files and licence_line else ()):
            tail = "/".join(parts[-len(glob.split("/")):])
            if fnmatch.fnmatch(tail, glob) or (not path.startswith("/") and fnmatch.fnmatch(path, glob)):
                found = licence_line.group(1).strip()
            if glob.rsplit("/", 1)[-1] == name:
                named = licence_line.group(1).strip()
    return named or found


@lru_cache(maxsize=None)
def _copyright(package: str) -> str:
    file = Path("/usr/share/doc") / package / "copyright"
    return file.read_text(errors="replace") if file.exists() else ""


def licence(package: str, path: str) -> str:
    """The DEP-5 License for the file, else the first License or "Licensed under" line."""
    text, file = _copyright(package), Path("/usr/share/doc") / package / "copyright"
    root = SOURCE_ROOTS.get(package)
    path = path.removeprefix(root) if root and path.startswith(root) else path
    line = re.search(r"^\s*(?:License:|Licen[cs]ed under)[ \t]*(\S.*)", text, re.M | re.I)
    return ((text.startswith("Format:") and dep5_licence(text, path))
            or (line.group(1).strip().rstrip(".") if line else f"unknown (see {file})"))


def python_licence(dist: str) -> str:
    meta = metadata.metadata(dist)
    text = re.sub(r"\n ", "\n", meta.get("License") or "")  # unfold the metadata's continuation lines
    classifiers = [c.rsplit(" :: ", 1)[-1] for c in meta.get_all("Classifier") or [] if c.startswith("License")]
    return (meta.get("License-Expression") or (text.startswith("Files:") and dep5_licence(text, "*"))
            or (classifiers[0] if classifiers else "") or text.split("\n", 1)[0] or "unknown (see package metadata)")


@lru_cache(maxsize=None)
def rcc_members(file: str) -> dict[str, tuple[int, int, int]]:
    """Member path -> (flags, offset, size) of a Qt resource file (format 1-3: "qres", version, tree,
    data and names offsets; tree nodes of 14 bytes, 22 from version 2; names as UTF-16BE)."""
    data = Path(file).read_bytes()
    if data[:4] != b"qres":
        raise OSError(f"{file}: not a Qt resource file")
    version, tree, payload, names = struct.unpack(">4I", data[4:20])
    node_size = 14 if version == 1 else 22
    members: dict[str, tuple[int, int, int]] = {}

    def visit(node: int, prefix: str) -> None:
        at = tree + node * node_size
        name_at, flags = struct.unpack(">IH", data[at:at + 6])
        length = struct.unpack(">H", data[names + name_at:names + name_at + 2])[0]
        path = f"{prefix}/{data[names + name_at + 6:names + name_at + 6 + 2 * length].decode('utf-16-be')}" if node else ""
        if flags & 2:  # a directory: its children are consecutive nodes
            count, first = struct.unpack(">II", data[at + 6:at + 14])
            for child in range(first, first + count):
                visit(child, path)
        else:
            offset = payload + struct.unpack(">I", data[at + 10:at + 14])[0]
            members[path] = (flags, offset + 4, struct.unpack(">I", data[offset:offset + 4])[0])
    visit(0, "")
    return members


def rcc_read(file: str, member: str) -> bytes:
    """A member's bytes as the package's author wrote them (zlib-compressed members are inflated)."""
    flags, offset, size = rcc_members(file)[member]
    with open(file, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if flags & 4:
        raise OSError(f"{file}:{member}: zstd-compressed, not read here")
    return zlib.decompress(data[4:]) if flags & 1 else data  # zlib: 4 bytes of the inflated size first


def readme_licences(file: str) -> dict[str, str]:
    """Member path -> License of the READMEs inside a resource file: stanzas of Copyright, License,
    Source, Files and Comment lines, the files named after Files: or on lines of their own, relative
    to the README's folder (GCompris's per-folder credits)."""
    found: dict[str, str] = {}
    for readme in sorted(m for m in rcc_members(file) if m.rsplit("/", 1)[-1] == "README"):
        folder = readme.rsplit("/", 1)[0]
        for stanza in re.split(r"\n[ \t]*\n", rcc_read(file, readme).decode("utf-8", "replace")):
            licence_line = re.search(r"^[ \t]*License:[ \t]*(\S.*)", stanza, re.M | re.I)
            names = [name for line in stanza.splitlines()
                     for name in re.sub(r"^[ \t]*Files:", "", line).split()
                     if not re.match(r"^[ \t]*[A-Za-z-]+:", line) or re.match(r"^[ \t]*Files:", line)]
            for name in (names if licence_line else ()):
                if name.lower().endswith(SUFFIXES):
                    found[f"{folder}/{name}"] = licence_line.group(1).strip()
    return found


def resolve(path: str) -> str:
    """A file path; python sources are written module:path/in/package (the venv differs per machine);
    a resource file's member FILE.rcc:/MEMBER resolves to FILE.rcc."""
    if RCC in path:
        return path.split(RCC, 1)[0] + ".rcc"
    if ":" in path:
        module, rel = path.split(":", 1)
        try:
            return str(resources.files(module) / rel)
        except ModuleNotFoundError:  # a client-only install has no scikit-image or matplotlib: named by check_corpus
            return f"/nonexistent/{module}/{rel}"
    return path


def source_bytes(path: str) -> bytes:
    """The source file's bytes, unchanged (a resource file's member as stored in it)."""
    if RCC in path:
        return rcc_read(resolve(path), "/" + path.split(RCC, 1)[1])
    return Path(resolve(path)).read_bytes()


def _open(path: str) -> Image.Image:
    return Image.open(io.BytesIO(source_bytes(path))) if RCC in path else Image.open(resolve(path))


def _rcc_candidates(package: str, version: str):
    """Resource-file members in RCC_FOLDERS, stored uncompressed (the image file's own bytes), with the
    README's licence, else the package's DEP-5 licence for the member's source path."""
    for file in sorted(_dpkg("-L", package).splitlines()):
        if not (file.endswith(".rcc") and os.path.isfile(file)):
            continue
        members, readmes = rcc_members(file), readme_licences(file)
        for member in sorted(members):
            if member.lower().endswith(SUFFIXES) and RCC_FOLDERS[package].search(member) and members[member][0] == 0:
                licence_text = readmes.get(member) or licence(package, member.split("/", 2)[-1])
                yield package, version, licence_text, file.removesuffix(".rcc") + RCC + member.lstrip("/")


def _candidates():
    """(package, version, licence, path) of every image file the packages ship."""
    for package in DEBIAN_PACKAGES:
        version = _dpkg("-W", "-f=${Version}", package)
        if package in RCC_FOLDERS:
            yield from _rcc_candidates(package, version)
            continue
        for path in sorted(_dpkg("-L", package).splitlines()):
            if (path.lower().endswith(SUFFIXES) and not SKIP.search(path) and os.path.isfile(path)
                    and (package not in FOLDERS or FOLDERS[package].search(path))):
                yield package, version, licence(package, path), path
    for dist, module, folder in PYTHON_SOURCES:
        for file in sorted((resources.files(module) / folder).iterdir(), key=lambda f: f.name):
            if file.name.lower().endswith(SUFFIXES):
                yield f"python:{dist}", metadata.version(dist), python_licence(dist), f"{module}:{folder}/{file.name}"


def _picture_key(path: str) -> str:
    """One key for one picture at several sizes or orientations: plasma's WALLPAPER/contents/images/
    WxH.ext (and images_dark/, a variant), mate's Elephants_3840x2160.jpg, sway's *_Portrait.png."""
    if "/contents/images" in path:
        return path.rsplit("/", 1)[0]
    return re.sub(r"([_-]?\d+x\d+|[_-]portrait)+$", "", path.rpartition(".")[0], flags=re.I)


def _name_stem(path: str) -> str:
    """Files of one scene or design: aloeL/aloeR, rubberwhale1/2, motorcycle_left/right, left/right,
    ela_original/ela_modified, gnome's NAME-d/NAME-l, plasma's light and dark variants."""
    if "/contents/images" in path:
        return path.split("/contents/")[0]
    if RCC in path:  # GCompris numbers unrelated pictures (fish1..fish28): near duplicates join by hash
        return path
    folder, name = path.rsplit("/", 1)
    stem = re.sub(r"(?<=[a-z])[LRAB]$", "", name.rpartition(".")[0])
    stem = re.sub(r"(?:[_-]?(?:left|right|original|modified|\d+)|-[dl])+$", "", stem, flags=re.I)
    return path if not stem and path.startswith(HTML) else f"{folder}/{stem.lower()}"  # 01.jpg, 02.jpg: unrelated


def _slug(package: str, path: str) -> str:
    """plasma-altai, mate-elephants, opencv-aloel, opencv-doc-NAME (tutorial pages), skimage-astronaut,
    gcompris-ACTIVITY-NAME, gnome-face-NAME (user pictures)."""
    tag = package.removeprefix("python:").replace("scikit-", "sk").split("-")[0] + ("-doc" * path.startswith(HTML))
    tag = "gnome-face" if package == "gnome-control-center-data" else tag
    name = _picture_key(path).replace("/contents/images_dark", "-dark").replace("/contents/images", "")
    if RCC in path:
        name = path.split(RCC)[0].rsplit("/", 1)[-1] + "-" + name.rsplit("/", 1)[-1]
    return f"{tag}-" + re.sub(r"[^a-z0-9]+", "-", name.rsplit("/", 1)[-1].lower()).strip("-")


def build_manifest() -> dict:
    """Scan the packages: one entry per distinct picture, near duplicates sharing a group."""
    largest: dict[str, tuple] = {}
    for package, version, licence_text, path in _candidates():
        try:
            with _open(path) as image:  # reads the header only
                quarter_turn = image.getexif().get(0x0112) in (5, 6, 7, 8)  # EXIF orientation
                size = image.size[::-1] if quarter_turn else image.size
        except OSError:
            continue
        key = _picture_key(path)
        if min(size) >= MIN_SIDE and (key not in largest or size[0] * size[1] > np.prod(largest[key][1])):
            largest[key] = ((package, version, licence_text, path), size)
    entries, seen = [], set()
    for (package, version, licence_text, path), (width, height) in sorted(
            largest.values(), key=lambda c: (GENERATION.get(c[0][0], 0), c[0][0], c[0][3])):
        data = source_bytes(path)
        sha = hashlib.sha256(data).hexdigest()
        if sha in seen:  # the same file in two packages
            continue
        seen.add(sha)
        with Image.open(io.BytesIO(data)) as image:
            rgb = thumbnail(image)
            entries.append(dict(path=path, package=package, package_version=version, licence=licence_text,
                                width=width, height=height, sha256=sha, colour=not is_grayscale(rgb),
                                kind=kind_of(image, rgb, path), hash=dhash(rgb)))
    # A fixed sample of the tutorial images, by file hash.
    html = sorted((e for e in entries if e["path"].startswith(HTML) and e["colour"]), key=lambda e: e["sha256"])
    keep = {e["sha256"] for e in [e for e in html if e["kind"] == "photograph"][:HTML_PHOTOGRAPHS]}
    keep |= {e["sha256"] for e in [e for e in html if e["kind"] != "photograph"][:HTML_RENDERED]}
    entries = [e for e in entries if e["sha256"] in keep or not (e["path"].startswith(HTML) and e["colour"])]
    ids: dict[str, int] = {}
    for entry in entries:
        slug = _slug(entry["package"], entry["path"])
        ids[slug] = ids.get(slug, 0) + 1
        entry["id"] = slug if ids[slug] == 1 else f"{slug}-{ids[slug]}"
        entry["kind"] = REVIEWED.get(entry["id"]) or (
            "photograph" if PHOTOGRAPH_FOLDERS.search(entry["path"]) else entry["kind"])
        if not entry["colour"]:
            entry["reason"] = f"grayscale: mean chroma under {GRAY_CHROMA} of 255 (excluded from the dataset)"
    _group(entries)
    return {"entries": entries}


def _group(entries: list[dict]) -> None:
    """group = id of the first entry of each connected set of near-identical hashes or shared stems."""
    parent = list(range(len(entries)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        a, b = sorted((root(i), root(j)))
        parent[b] = a  # the root stays the first entry
    hashes = [e.pop("hash") for e in entries]
    hashed = [i for i, h in enumerate(hashes) if h is not None]
    bits = np.array([hashes[i] for i in hashed]).reshape(len(hashed), -1)
    for n, i in enumerate(hashed):
        distance = np.unpackbits(bits[:n] ^ bits[n], axis=1).sum(1)
        for m in np.flatnonzero(distance <= HASH_DISTANCE):
            join(hashed[m], i)
    stems: dict[str, int] = {}
    for i, entry in enumerate(entries):
        join(stems.setdefault(_name_stem(entry["path"]), i), i)
    for i, entry in enumerate(entries):
        entry["group"] = entries[root(i)]["id"]


def save_manifest(manifest: dict, path: Path = MANIFEST) -> None:
    path.write_text(json.dumps(manifest, sort_keys=True, indent=1) + "\n")


def load_manifest(path: Path = MANIFEST) -> dict:
    return json.loads(path.read_text())


def check_corpus(manifest: dict | None = None) -> list[dict]:
    """The colour entries, sorted by id, once every file is present; else a CorpusError naming the
    packages to install and the command that does it."""
    entries = sorted((e for e in (manifest or load_manifest())["entries"] if e["colour"]), key=lambda e: e["id"])
    missing = sorted({e["package"] for e in entries if not os.path.isfile(resolve(e["path"]))})
    if missing:
        debian = [p for p in missing if not p.startswith("python:")]
        python = [p.removeprefix("python:") for p in missing if p.startswith("python:")]
        fixes = ([f"apt-get install -y {' '.join(debian)}"] if debian else []) + (
            [f"pip install {' '.join(python)}"] if python else [])
        raise CorpusError(f"corpus images are missing (packages {', '.join(missing)}); run: {' and '.join(fixes)}")
    return entries


# -- reading sources and cutting crops ----------------------------------------------------------

# id -> reduced RGB copy, most recent last. Reads in dataset order cycle through every source, so the
# disk cache does the heavy lifting; this serves the crops of one source that a shuffle brings close.
_memory: OrderedDict[str, np.ndarray] = OrderedDict()
MEMORY = 32


def _reduce(entry: dict) -> bytes:
    """A copy with the longest side at most MAX_SIDE, upright (EXIF orientation applied): photographs
    as JPEG quality 95, rendered images as PNG (exact flat colours). It decodes in a few ms, where a
    5K wallpaper PNG takes 100+ ms."""
    with _open(entry["path"]) as image:
        image.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at 1/2..1/8 scale directly
        rgb = _rgb(ImageOps.exif_transpose(image))
    rgb.thumbnail((MAX_SIDE, MAX_SIDE), Image.LANCZOS)
    buffer = io.BytesIO()
    photograph = entry["kind"] == "photograph"
    rgb.save(buffer, "JPEG" if photograph else "PNG", **({"quality": 95} if photograph else {"compress_level": 1}))
    return buffer.getvalue()


def source_image(entry: dict) -> np.ndarray:
    """The entry's picture, reduced, as RGB uint8; always decoded from the cached file's bytes, so
    every process, with the cache warm or cold, cuts identical crops."""
    if entry["id"] in _memory:
        _memory.move_to_end(entry["id"])
        return _memory[entry["id"]]
    cache = Path(os.environ.get("EQUIPROBE_CACHE") or Path.home() / ".cache" / "equiprobe") / "corpus"
    suffix = "jpeg" if entry["kind"] == "photograph" else "png"
    file = cache / f"{entry['id']}-{entry['sha256'][:12]}-{MAX_SIDE}.{suffix}"
    if file.exists():
        data = file.read_bytes()
    else:
        data = _reduce(entry)
        cache.mkdir(parents=True, exist_ok=True)
        temporary = file.with_name(f"{file.name}.{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, file)  # atomic: concurrent workers never read half a file
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    rgb.setflags(write=False)
    _memory[entry["id"]] = rgb
    while len(_memory) > MEMORY:
        _memory.popitem(last=False)
    return rgb


def corpus_crop(entry: dict, crop: int) -> bytes:
    """Crop number `crop` of a source: side 0.35..1 of the source's shorter side, aspect ratio 1:2..2:1
    (log-uniform), resized so its shorter side is 224..384 px, JPEG quality 90..95; all drawn from a
    hash of (id, crop), so the bytes never change."""
    seed = hashlib.blake2b(f"{entry['id']}/{crop}".encode(), digest_size=8).digest()
    rng = np.random.default_rng(int.from_bytes(seed, "little"))
    rgb = source_image(entry)
    h, w = rgb.shape[:2]
    side, aspect = rng.uniform(0.35, 1.0) * min(h, w), np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    cw, ch = min(w, round(side * np.sqrt(aspect))), min(h, round(side / np.sqrt(aspect)))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    short = int(rng.integers(224, 385))
    size = (short, round(short * ch / cw)) if cw <= ch else (round(short * cw / ch), short)
    buffer = io.BytesIO()
    Image.fromarray(rgb[y:y + ch, x:x + cw]).resize(size, Image.LANCZOS).save(
        buffer, "JPEG", quality=int(rng.integers(90, 96)))
    return buffer.getvalue()


def split_of(group: str) -> str:
    """Fixed split of a source group: blake2b(group)'s first 8 bytes as a fraction of 2**64 against SPLITS."""
    u = int.from_bytes(hashlib.blake2b(group.encode(), digest_size=8).digest(), "big") / 2 ** 64
    return next(name for limit, name in SPLITS if u < limit)


def corpus_dataset(crops_per_source: int = 20) -> Dataset:
    """Crop j of source s is image s + j * S, so any prefix covers every source; labels are kinds."""
    entries = check_corpus()
    n = len(entries)

    def record(i: int) -> Record:
        entry, crop = entries[i % n], i // n
        return Record(i, f"corpus/{entry['id']}/{crop:04d}", KINDS.index(entry["kind"]), split_of(entry["group"]),
                      lambda: corpus_crop(entry, crop), entry["group"])
    return Dataset("corpus", list(KINDS), n * crops_per_source, record)
