"""An index of known images: which known image is an upload an (edited) copy of?

Pure index code, numpy and faiss only (a Triton python backend loads it; nothing here reads
stores: `clients/index_build.py` does). An index is a directory:

    index.faiss    the faiss index (faiss.write_index): one L2-normalised vector per known image,
                   its identity version's embedding; inner product = cosine similarity
    keys.npy       [N] unicode: the image key of each vector, in id order (unique)
    store_ids.npy  [N] int32: which source store (index.json's "stores") holds the image
    rows.npy       [N] int64: its row in that store, where its edited versions are
    references.npy [N, W] float16: each image's identity embedding as stored (not normalised),
                   then its identity FEATURES where the stores hold them (W = dim + features_dim):
                   what the reference-aware probe (INDEX/probe/, trainer/match_probe.py) compares
                   an upload with; read by memory map
    projection.npz the copy-detection projection (services/match_projection.py), where the index was
                   built with one: the faiss vectors are then unit(projection(reference)), search_dim
                   wide, and queries are projected before the search (W wide: embedding, FEATURES)
    index.json     metadata: format version, encoder, its ONNX sha256, dim, metric, kind and the
                   kind's parameters, count, the source stores (path, catalog, catalog version,
                   images indexed), recall against exact search, the shard, created time,
                   and index.faiss's size and sha256

Kinds: "flat" (exact, faiss IndexFlatIP), "ivf" (IndexIVFFlat), "hnsw" (IndexHNSWFlat),
"ivfpq" (IndexIVFPQ, compressed); "auto" picks flat up to AUTO_FLAT_MAX vectors, ivf up to
AUTO_IVF_MAX, ivfpq above. A directory is written whole into a hidden temp directory beside
it, every file fsynced, then swapped in by rename: a crash leaves the old index or the new one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import faiss
import numpy as np

from .files import fsync_path, sha256_of, swap_in
from .match_projection import FILE as PROJECTION
from .match_projection import Projection

FORMAT_VERSION = 1
METRIC = "inner_product"  # on L2-normalised vectors: cosine similarity
KINDS = ("flat", "ivf", "hnsw", "ivfpq")
AUTO_FLAT_MAX = 100_000  # exact search up to here: 100k x D=1000 float32 is 400 MB, ~10 ms a query
AUTO_IVF_MAX = 2_000_000  # IVF-Flat up to here (8 GB at D=1000); IVF-PQ above
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
TRAIN_MAX = 200_000  # vectors the IVF quantizers are trained on at most
EPS = 1e-12

FILES = ("index.faiss", "keys.npy", "store_ids.npy", "rows.npy", "index.json")
REFERENCES = "references.npy"
# The reference-aware probe, a directory inside the index (trainer/match_probe.py writes it).
PROBE_DIR, PROBE_ONNX, PROBE_JSON = "probe", "match_probe.onnx", "match_probe.json"
# What must agree between every store (and index) that goes into one index.
COMPATIBLE_FIELDS = ("encoder", "encoder_onnx_sha256", "dim", "features_dim")
# What an index written before a field existed holds implicitly.
FIELD_DEFAULTS = {"features_dim": 0}


class MatchIndexError(ValueError):
    """An index that cannot be used: missing, corrupt, inconsistent, or mixing encoders."""


def unit(x: np.ndarray) -> np.ndarray:
    """float32 rows scaled to length 1 (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), EPS), dtype=np.float32)


# -- kinds --------------------------------------------------------------------------------------

def choose_kind(count: int, kind: str = "auto") -> str:
    if kind == "auto":
        return "flat" if count <= AUTO_FLAT_MAX else "ivf" if count <= AUTO_IVF_MAX else "ivfpq"
    if kind not in KINDS:
        raise MatchIndexError(f"unknown index kind {kind!r}; one of auto, {', '.join(KINDS)}")
    return kind


def kind_params(kind: str, count: int, dim: int) -> dict:
    """The faiss parameters of a kind for `count` vectors of `dim` (all derived from the sizes)."""
    if kind == "flat":
        return {}
    if kind == "hnsw":
        return {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    # IVF: ~4 sqrt(N) lists, at least 39 training vectors a list (faiss' k-means minimum)
    nlist = max(1, min(int(4 * math.sqrt(count)), count // 39))
    params = {"nlist": nlist, "nprobe": min(nlist, max(8, nlist // 16))}
    if kind == "ivfpq":
        # m sub-quantizers of >= 8 dims each (m divides dim): m bytes a vector at 8 bits
        m = max([c for c in range(1, max(1, dim // 8) + 1) if dim % c == 0])
        # 2^nbits centroids per sub-quantizer need that many training vectors (39x recommended)
        nbits = int(max(1, min(8, math.floor(math.log2(max(2, train_size(kind, count, nlist) // 39))))))
        params.update(m=m, nbits=nbits)
    return params


def train_size(kind: str, count: int, nlist: int) -> int:
    """How many vectors an IVF kind is trained on (0: the kind needs no training)."""
    if kind not in ("ivf", "ivfpq"):
        return 0
    return int(min(count, max(64 * nlist, 10_000), TRAIN_MAX))


def new_index(kind: str, dim: int, params: dict) -> faiss.Index:
    """An empty faiss index of `kind` (IVF kinds still untrained)."""
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params["M"], ip)
        index.hnsw.efConstruction = params["efConstruction"]
        index.hnsw.efSearch = params["efSearch"]
        return index
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, params["nlist"], ip)
    elif kind == "ivfpq":
        index = faiss.IndexIVFPQ(quantizer, dim, params["nlist"], params["m"], params["nbits"], ip)
    else:
        raise MatchIndexError(f"unknown index kind {kind!r}")
    index.nprobe = params["nprobe"]  # faiss' python wrapper keeps `quantizer` alive with the index
    return index


# -- exact search over a stream of chunks (the ground truth of recall) --------------------------

class ExactTopK:
    """The exact top-k ids and similarities of fixed queries among vectors seen chunk by chunk
    (chunks in id order: `update(chunk, first_id)`), never holding more than one chunk."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries = unit(queries)
        self.k = k
        self.sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)

    def update(self, chunk: np.ndarray, first_id: int) -> None:
        if not len(chunk) or not len(self.queries):
            return
        sims = self.queries @ unit(chunk).T
        ids = np.broadcast_to(np.arange(first_id, first_id + len(chunk)), sims.shape)
        if sims.shape[1] > self.k:  # the chunk's own top k first (linear), then the sort of 2k columns
            best = np.argpartition(-sims, self.k - 1, axis=1)[:, :self.k]
            sims, ids = np.take_along_axis(sims, best, 1), np.take_along_axis(ids, best, 1)
        sims = np.concatenate([self.sims, sims], 1)
        ids = np.concatenate([self.ids, ids], 1)
        order = np.lexsort((ids, -sims), axis=1)[:, :self.k]  # ties: the lower id first
        self.sims = np.take_along_axis(sims, order, 1)
        self.ids = np.take_along_axis(ids, order, 1)


def recall_figures(approx_ids: np.ndarray, exact: ExactTopK, owners: np.ndarray, queries_from: str) -> dict:
    """recall@k: the fraction of queries whose exact nearest neighbour is in the approximate
    top k; match@1: the fraction whose own image (`owners`, an id per query) is ranked first,
    approximately and exactly."""
    nearest = exact.ids[:, :1]
    n = max(1, len(owners))
    return {"queries": int(len(owners)), "queries_from": queries_from,
            "recall@1": float((approx_ids[:, :1] == nearest).any(1).sum() / n),
            "recall@10": float((approx_ids[:, :10] == nearest).any(1).sum() / n),
            "match@1": float((approx_ids[:, 0] == owners).sum() / n),
            "match@1_exact": float((exact.ids[:, 0] == owners).sum() / n)}


# -- metadata -----------------------------------------------------------------------------------

def check_compatible(have: dict, new: dict, have_name: str, new_name: str) -> None:
    """Refuse to put vectors of different encoders (or weights, or dims) into one index."""
    for name in COMPATIBLE_FIELDS:
        a, b = have.get(name, FIELD_DEFAULTS.get(name)), new.get(name, FIELD_DEFAULTS.get(name))
        if a != b:
            raise MatchIndexError(f"{name} differs: {have_name} has {a!r}, {new_name} has "
                                  f"{b!r}; one index holds one encoder's embeddings")


def describe_memory(meta: dict) -> dict:
    """Bytes of the index (index.faiss, about what it takes in memory) and of its keys and
    locations, per vector and per million images."""
    count = max(1, int(meta.get("count") or 0))
    index_bytes = int(meta.get("index_bytes") or 0)
    side = int(meta.get("side_bytes") or 0)
    return {"index_bytes": index_bytes, "keys_and_locations_bytes": side,
            "bytes_per_vector": (index_bytes + side) / count,
            "bytes_per_million_images": (index_bytes + side) / count * 1e6,
            # on disk, read by memory map (the probe's references), not held in memory
            "references_bytes": int(meta.get("references_bytes") or 0)}


# -- reading ------------------------------------------------------------------------------------

@dataclass
class MatchIndex:
    path: Path
    meta: dict
    index: faiss.Index
    keys: np.ndarray
    store_ids: np.ndarray
    rows: np.ndarray
    references: Optional[np.ndarray] = field(default=None, repr=False)  # [N, W] float16 memmap; None: older index
    projection: Optional[Projection] = field(default=None, repr=False)  # projection.npz; None: raw embeddings
    _positions: Optional[dict] = field(default=None, repr=False)
    _gpu_resources: object = field(default=None, repr=False)  # faiss.StandardGpuResources, once on a GPU

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        """The encoder's embedding dim (a compatibility field; the faiss vectors are search_dim wide)."""
        return int(self.meta["dim"])

    @property
    def search_dim(self) -> int:
        """Width of the faiss vectors: the projection's dim, or the embedding's."""
        return int(self.index.d)

    @property
    def query_width(self) -> int:
        """How wide the queries `search` needs: W (embedding, then FEATURES) for a projected index,
        the embedding's dim otherwise (wider rows, such as a whole upload vector, are cut to it)."""
        return self.projection.width if self.projection is not None else self.dim

    @classmethod
    def open(cls, path: Path, verify: bool = False) -> "MatchIndex":
        """Load an index directory; ValueError (one line naming the file) for anything missing,
        corrupt or inconsistent. `verify`: also check index.faiss's sha256."""
        path = Path(path)
        meta = read_meta(path)
        faiss_path = path / "index.faiss"
        if not faiss_path.is_file():
            raise MatchIndexError(f"{faiss_path} is missing; the index is incomplete")
        size = faiss_path.stat().st_size
        if meta.get("index_bytes") is not None and size != meta["index_bytes"]:
            raise MatchIndexError(f"{faiss_path} is {size} bytes, index.json says {meta['index_bytes']}: "
                                  "truncated or replaced")
        if verify and meta.get("index_sha256") and sha256_of(faiss_path) != meta["index_sha256"]:
            raise MatchIndexError(f"{faiss_path}: sha256 differs from index.json's; the file is corrupt")
        try:
            index = faiss.read_index(str(faiss_path))
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
            raise MatchIndexError(f"{faiss_path} is corrupt or truncated (faiss: {reason.split(': ', 1)[-1]})") \
                from None
        arrays = {}
        for name in ("keys", "store_ids", "rows"):
            file = path / f"{name}.npy"
            try:
                arrays[name] = np.load(file, allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:
                raise MatchIndexError(f"{file} is missing or unreadable ({exc})") from None
        for name, array in arrays.items():
            if len(array) != index.ntotal or index.ntotal != meta.get("count"):
                raise MatchIndexError(f"{path / (name + '.npy')} holds {len(array)} entries, index.faiss "
                                      f"{index.ntotal} vectors, index.json count {meta.get('count')}: they must agree")
        search_dim = meta.get("search_dim", meta.get("dim"))
        if index.d != search_dim:
            raise MatchIndexError(f"{faiss_path} holds {index.d}-dim vectors, index.json says search_dim {search_dim}")
        references = read_references(path, meta)
        return cls(path, meta, index, arrays["keys"], arrays["store_ids"], arrays["rows"], references,
                   read_projection(path, meta, verify=True))

    @property
    def reference_width(self) -> Optional[int]:
        """W of references.npy (dim + features_dim); None for an index written before references."""
        return None if self.references is None else int(self.references.shape[1])

    def reference(self, ids: np.ndarray) -> np.ndarray:
        """float32 [m, W]: the references of vectors `ids` (read from the memory map)."""
        if self.references is None:
            raise MatchIndexError(f"{self.path} has no {REFERENCES} (written before references existed); rebuild it "
                                  "with `index build`")
        ids = np.asarray(ids, dtype=np.int64)
        order = np.argsort(ids, kind="stable")  # gathers front to back, the order restored after
        out = np.empty((len(ids), self.references.shape[1]), np.float32)
        out[order] = self.references[ids[order]]
        return out

    @property
    def probe_path(self) -> Path:
        """Where the reference-aware probe is (INDEX/probe/; it may not exist)."""
        return self.path / PROBE_DIR

    def search_vectors(self, queries: np.ndarray) -> np.ndarray:
        """The faiss query vectors [m, search_dim] of uploads [m, W] (embedding, then FEATURES; [m, D]
        suffices for an index without projection): projected where the index has a projection, then
        L2-normalised."""
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        width = queries.shape[-1]
        if self.projection is not None:
            if width != self.projection.width:
                raise MatchIndexError(f"queries are {width} wide; {self.path}'s copy projection ({PROJECTION}) takes "
                                      f"{self.projection.width} (embedding {self.dim} + FEATURES "
                                      f"{self.projection.width - self.dim})")
            return unit(self.projection(queries))
        if width not in (self.dim, self.reference_width or self.dim, self.dim + int(self.meta.get("features_dim") or 0)):
            raise MatchIndexError(f"queries are {width} wide, the index holds {self.dim}-dim embeddings (pass the "
                                  f"embedding, or the embedding then FEATURES)")
        return unit(queries[:, :self.dim])

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(similarities [m, k] float32, ids [m, k] int64 (-1: none), keys [m, k] ("" for none))
        of uploads [m, W] (or [W]): embedding then FEATURES, projected where the index has a
        projection (`query_width`); without one, the first `dim` columns (an embedding alone will
        do). Queries are L2-normalised here."""
        vectors = self.search_vectors(queries)
        k = max(1, min(k, self.count))
        sims, ids = self.index.search(vectors, k)
        keys = np.where(ids >= 0, self.keys[np.maximum(ids, 0)], "")
        return sims, ids, keys

    def to_gpu(self, device: int = 0) -> str:
        """Move the faiss index onto GPU `device` (faiss-gpu: the native flavour's NAME_match);
        returns where it searches. MatchIndexError where this faiss has no GPU support or sees no
        GPU. HNSW has no GPU implementation in faiss: it stays on the CPU, and this says so."""
        if not hasattr(faiss, "StandardGpuResources"):
            raise MatchIndexError(f"{self.path}: faiss_device gpu, but this faiss ({faiss.__version__}) is built "
                                  "without GPU support; install faiss-gpu-cu12 (the server image does) or serve with "
                                  "faiss_device cpu")
        gpus = faiss.get_num_gpus()
        if not 0 <= device < gpus:
            raise MatchIndexError(f"{self.path}: faiss_device gpu {device}, but faiss sees {gpus} GPU(s)")
        if self.meta.get("kind") == "hnsw":
            return "cpu (faiss has no GPU HNSW)"
        self._gpu_resources = faiss.StandardGpuResources()  # kept alive as long as the index
        options = faiss.GpuClonerOptions()
        options.useFloat16 = self.meta.get("kind") == "ivfpq"  # PQ codes above 48 bytes need float16 tables
        self.index = faiss.index_cpu_to_gpu(self._gpu_resources, device, self.index, options)
        return f"gpu {device}"

    def location(self, id_: int) -> tuple[str, int]:
        """(store path, row) of vector `id_`: where the image's versions are."""
        store = self.meta["stores"][int(self.store_ids[id_])]
        return store["path"], int(self.rows[id_])

    def id_of(self, key: str) -> int:
        if self._positions is None:
            self._positions = {str(k): i for i, k in enumerate(self.keys)}
        return self._positions.get(key, -1)

    def memory(self) -> dict:
        return describe_memory(self.meta)


def read_references(path: Path, meta: dict) -> Optional[np.ndarray]:
    """references.npy by memory map, checked against index.json; None for an index written before it."""
    file = Path(path) / REFERENCES
    if not file.is_file():
        if meta.get("reference_width") is not None:
            raise MatchIndexError(f"{file} is missing; the index is incomplete")
        return None
    try:
        references = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise MatchIndexError(f"{file} is unreadable ({exc})") from None
    width = meta.get("reference_width")
    if references.ndim != 2 or references.shape != (meta.get("count"), width) or references.dtype != np.float16:
        raise MatchIndexError(f"{file} is {references.dtype} {references.shape}, index.json says float16 "
                              f"({meta.get('count')}, {width}): they must agree")
    return references


def read_projection(path: Path, meta: dict, verify: bool = True) -> Optional[Projection]:
    """projection.npz of an index whose index.json records one (None otherwise), checked against
    it: its sha256 (`verify`), width (the references') and dim (the faiss vectors')."""
    record = meta.get("projection")
    if not record:
        return None
    file = Path(path) / PROJECTION
    if not file.is_file():
        raise MatchIndexError(f"{file} is missing; index.json says the index is projected (rebuild it)")
    if verify and record.get("sha256") and sha256_of(file) != record["sha256"]:
        raise MatchIndexError(f"{file}: sha256 differs from index.json's; the file is corrupt or replaced")
    try:
        projection = Projection.load(path)
    except ValueError as exc:
        raise MatchIndexError(str(exc)) from None
    width = meta.get("reference_width") or int(meta["dim"]) + int(meta.get("features_dim") or 0)
    search_dim = meta.get("search_dim", meta.get("dim"))
    if projection.width != width or projection.dim != search_dim:
        raise MatchIndexError(f"{file} maps {projection.width} values to {projection.dim}; index.json says width "
                              f"{width}, search_dim {search_dim}")
    return projection


def read_meta(path: Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise MatchIndexError(f"{path} is not an index directory (it does not exist)" if not path.exists()
                              else f"{path} is not an index directory (not a directory)")
    file = path / "index.json"
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise MatchIndexError(f"{file} is missing; {path} is not an index") from None
    except (OSError, ValueError) as exc:
        raise MatchIndexError(f"{file} is unreadable ({exc})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise MatchIndexError(f"{file}: format version {meta.get('format_version')!r}, this code reads "
                              f"{FORMAT_VERSION}")
    return meta



# -- writing ------------------------------------------------------------------------------------

def _write_references(file: Path, references, count: int, width: int) -> None:
    """references.npy [count, width] float16 from an array or from chunks [b, width] in id order."""
    out = np.lib.format.open_memmap(file, mode="w+", dtype=np.float16, shape=(count, width))
    chunks = [references] if isinstance(references, np.ndarray) else references
    at = 0
    for chunk in chunks:
        chunk = np.asarray(chunk)
        if chunk.ndim != 2 or chunk.shape[1] != width or at + len(chunk) > count:
            raise MatchIndexError(f"{file}: a chunk of references {chunk.shape} does not fit [{count}, {width}] "
                                  f"at row {at}")
        out[at:at + len(chunk)] = chunk
        at += len(chunk)
    if at != count:
        raise MatchIndexError(f"{file}: {at} references for {count} vectors")
    out.flush()
    del out


def write_index(path: Path, index: faiss.Index, keys: np.ndarray, store_ids: np.ndarray, rows: np.ndarray,
                meta: dict, replace: bool = False, references=None, reference_width: Optional[int] = None,
                keep: tuple[str, ...] = (), projection=None) -> dict:
    """Write an index directory atomically; returns the metadata written (sizes, count, times added).
    `references`: an array [N, W] or chunks of it in id order (references.npy; W `reference_width`);
    `keep`: subdirectories of the index being replaced to carry over (the probe, on `index add`);
    `projection`: the copy projection the faiss vectors were made with, a Projection (saved) or
    an existing projection.npz (copied byte for byte); meta["projection"] gives its "store" and
    "images", and gets "dim", "width" and "sha256". `meta["dim"]` stays the embedding's dim;
    "search_dim" is the faiss vectors'."""
    path = Path(path)
    if len(keys) != index.ntotal or len(store_ids) != index.ntotal or len(rows) != index.ntotal:
        raise MatchIndexError(f"{path}: {index.ntotal} vectors, {len(keys)} keys, {len(store_ids)} store ids, "
                              f"{len(rows)} rows: they must agree")
    if path.exists() and not replace:
        raise MatchIndexError(f"{path} exists; refusing to overwrite it (add to it with `index add`, or remove it)")
    if path.exists() and not (path / "index.json").is_file() and (not path.is_dir() or any(path.iterdir())):
        raise MatchIndexError(f"{path} exists and is not an index; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir()
    try:
        faiss.write_index(index, str(staged / "index.faiss"))
        keys = np.asarray(keys)
        if keys.dtype.kind != "U":
            keys = keys.astype(str)
        np.save(staged / "keys.npy", keys)
        np.save(staged / "store_ids.npy", np.asarray(store_ids, dtype=np.int32))
        np.save(staged / "rows.npy", np.asarray(rows, dtype=np.int64))
        files = FILES
        if references is not None:
            _write_references(staged / REFERENCES, references, int(index.ntotal), int(reference_width))
            files = (*FILES, REFERENCES)
            meta = {**meta, "reference_width": int(reference_width),
                    "references_bytes": (staged / REFERENCES).stat().st_size}
        else:
            meta = {k: v for k, v in meta.items() if k not in ("reference_width", "references_bytes")}
        for name in keep:
            if (path / name).is_dir():
                shutil.copytree(path / name, staged / name)
        if projection is not None:
            if isinstance(projection, Projection):
                projection.save(staged)
            else:
                shutil.copyfile(projection, staged / PROJECTION)
            loaded = Projection.load(staged)
            if loaded.dim != index.d:
                raise MatchIndexError(f"{path}: the projection gives {loaded.dim} dims, the faiss index holds {index.d}")
            files = (*files, PROJECTION)
            meta = {**meta, "projection": {**(meta.get("projection") or {}), "dim": loaded.dim,
                                           "width": loaded.width, "sha256": sha256_of(staged / PROJECTION)}}
        else:
            meta = {k: v for k, v in meta.items() if k != "projection"}
        dim = int(meta["dim"]) if projection is not None else int(index.d)
        meta = {**meta, "format_version": FORMAT_VERSION, "metric": METRIC, "count": int(index.ntotal),
                "dim": dim, "search_dim": int(index.d), "index_bytes": (staged / "index.faiss").stat().st_size,
                "index_sha256": sha256_of(staged / "index.faiss"),
                "side_bytes": sum((staged / f).stat().st_size for f in ("keys.npy", "store_ids.npy", "rows.npy")),
                "created": meta.get("created") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (staged / "index.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        for name in files:
            fsync_path(staged / name)
        fsync_path(staged)
        swap_in(staged, path)
    except BaseException:
        if staged.exists() and staged.name.startswith(f".{path.name}.tmp-"):
            shutil.rmtree(staged, ignore_errors=True)
        raise
    return meta
