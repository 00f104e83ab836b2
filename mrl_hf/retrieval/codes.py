"""Compressed prefix codes and the FAISS structure that searches them: one ``CodeLevel`` per (dim, precision, structure).

Each database row is cut to its first ``dim`` features, L2-normalised on its own (``metric="cosine"``), and only
then quantised:

- ``float32``: the prefix as is (``IndexFlat``, ``IndexHNSWFlat``, ``IndexIVFFlat``);
- ``float16``: half floats (FAISS scalar quantiser ``QT_fp16``);
- ``int8``: 8 bits per feature with a range calibrated per dimension from the data (FAISS ``QT_8bit``: the
  min and max of each dimension over a training sample); queries stay float (asymmetric distance);
- ``binary``: one sign bit per feature, searched by Hamming distance (``IndexBinaryFlat``/``HNSW``/``IVF``);
  the query is binarised too. ``dim`` must be a multiple of 8.

The codes are what a plan keeps in RAM; the full float32 vectors are read only to re-rank the candidates.
"""
from __future__ import annotations

import numpy as np

from ._faiss_backend import auto_nlist, import_faiss
from ._inputs import prefix

PRECISIONS = ("float32", "float16", "int8", "binary")
STRUCTURES = ("flat", "hnsw", "ivf")
_SQ_NAME = {"float32": "Flat", "float16": "SQfp16", "int8": "SQ8"}
_TRAIN_ROWS = 65536  # rows sampled to calibrate int8 ranges / train IVF centroids
_ADD_ROWS = 131072


def _factory_string(precision: str, structure: str, hnsw_m: int, nlist: int) -> str:
    if precision == "binary":
        return {"flat": "BFlat", "hnsw": f"BHNSW{hnsw_m}", "ivf": f"BIVF{nlist}"}[structure]
    codes = _SQ_NAME[precision]
    if structure == "flat":
        return codes
    if structure == "hnsw":
        return f"HNSW{hnsw_m}" if precision == "float32" else f"HNSW{hnsw_m},{codes}"
    return f"IVF{nlist},{codes}"


def sign_bits(x: np.ndarray) -> np.ndarray:
    """Pack the sign of every feature (1 for > 0) into bytes: ``(n, dim)`` float -> ``(n, dim // 8)`` uint8."""
    return np.packbits(x > 0, axis=1)


class CodeLevel:
    """The database's ``dim``-prefixes, coded at ``precision`` and held in a FAISS ``structure``."""

    def __init__(self, dim: int, precision: str, structure: str, metric: str, hnsw_m: int = 32,
                 nlist: int | None = None, index=None):
        self.faiss = import_faiss()
        self.dim, self.precision, self.structure, self.metric = dim, precision, structure, metric
        self.hnsw_m, self.nlist = hnsw_m, nlist
        self.index = index
        self._nbytes = None

    @property
    def key(self) -> tuple[int, str, str]:
        return (self.dim, self.precision, self.structure)

    @property
    def binary(self) -> bool:
        return self.precision == "binary"

    def _encode(self, x: np.ndarray) -> np.ndarray:
        """Rows of the full database (or queries) -> what this FAISS index takes."""
        p = prefix(x, self.dim, self.metric)
        return sign_bits(p) if self.binary else p

    def build(self, database: np.ndarray) -> "CodeLevel":
        """Train (ranges, centroids) on a sample of ``database`` and add every row, in chunks."""
        f = self.faiss
        n = database.shape[0]
        if self.structure == "ivf":
            self.nlist = self.nlist or auto_nlist(n)
            if self.nlist > n:
                raise ValueError(f"nlist={self.nlist} inverted lists need at least that many vectors, but the index "
                                 f"holds {n}; lower nlist or use structure='flat'.")
        spec = _factory_string(self.precision, self.structure, self.hnsw_m, self.nlist or 1)
        if self.binary:
            self.index = f.index_binary_factory(self.dim, spec)
        else:
            metric = f.METRIC_L2 if self.metric == "l2" else f.METRIC_INNER_PRODUCT
            self.index = f.index_factory(self.dim, spec, metric)
        if not self.index.is_trained:
            rows = np.arange(n) if n <= _TRAIN_ROWS else np.sort(
                np.random.default_rng(0).choice(n, _TRAIN_ROWS, replace=False))
            self.index.train(self._encode(database[rows]))
        self.add(database)
        return self

    def add(self, x: np.ndarray) -> None:
        for s in range(0, x.shape[0], _ADD_ROWS):
            self.index.add(self._encode(x[s:s + _ADD_ROWS]))
        self._nbytes = None

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def nbytes(self) -> int:
        """RAM of the codes plus the structure (graph links, inverted-list ids, centroids, int8 ranges).

        Measured as FAISS's serialised size, which holds exactly those arrays.
        """
        if self._nbytes is None:
            f = self.faiss
            blob = f.serialize_index_binary(self.index) if self.binary else f.serialize_index(self.index)
            self._nbytes = int(blob.nbytes)
        return self._nbytes

    def search(self, queries: np.ndarray, k: int, ef_search: int, nprobe: int):
        """Top-``k`` ids of the full-size ``queries`` (prefixed and coded here) and the mean vectors scored."""
        f = self.faiss
        n = self.ntotal
        k = min(k, n)
        scored = float(n)
        if self.structure == "hnsw":
            self.index.hnsw.efSearch = max(ef_search, k)
            f.cvar.hnsw_stats.reset()
        elif self.structure == "ivf":
            ivf = self.index if self.binary else f.extract_index_ivf(self.index)
            ivf.nprobe = min(nprobe, ivf.nlist)
            scored = min(1.0, ivf.nprobe / ivf.nlist) * n + ivf.nlist  # expected list sizes, plus centroids
        _, ids = self.index.search(self._encode(queries), k)
        if self.structure == "hnsw":
            scored = f.cvar.hnsw_stats.ndis / max(len(queries), 1)
        return ids.astype(np.int64, copy=False), scored

    def save(self, path: str) -> None:
        (self.faiss.write_index_binary if self.binary else self.faiss.write_index)(self.index, path)

    @classmethod
    def load(cls, path: str, dim: int, precision: str, structure: str, metric: str) -> "CodeLevel":
        f = import_faiss()
        index = f.read_index_binary(path) if precision == "binary" else f.read_index(path)
        return cls(dim, precision, structure, metric, index=index)
