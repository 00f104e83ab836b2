"""FAISS search structures for one prefix dim: flat (exact), HNSW and IVF. ``faiss`` is imported lazily."""
from __future__ import annotations

import math

import numpy as np

from ._rerank import worst_score

INDEX_TYPES = ("flat", "hnsw", "ivf")


def import_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("The FAISS backend needs the faiss package: pip install 'mrl-hf[faiss]' (faiss-cpu), "
                          "or use backend='torch' with index_type='flat'.") from None
    return faiss


def auto_nlist(n: int) -> int:
    """About 4*sqrt(n) inverted lists, but never fewer than 39 training vectors per list."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


class FaissLevel:
    """One FAISS index over prepared prefixes (normalised for cosine), searched with per-call parameters."""

    persistent = True

    def __init__(self, dim: int, metric: str, index_type: str, params: dict, index=None):
        self.faiss = import_faiss()
        self.dim, self.metric, self.index_type, self.params = dim, metric, index_type, params
        self._metric_code = self.faiss.METRIC_L2 if metric == "l2" else self.faiss.METRIC_INNER_PRODUCT
        self.index = index if index is not None else self._new_index()
        self.persistent = index_type != "flat"  # a flat index is rebuilt from the embeddings on load

    def _new_index(self):
        f = self.faiss
        if self.index_type == "flat":
            return f.IndexFlat(self.dim, self._metric_code)
        if self.index_type == "hnsw":
            index = f.IndexHNSWFlat(self.dim, self.params["hnsw_m"], self._metric_code)
            index.hnsw.efConstruction = self.params["ef_construction"]
            return index
        return None  # IVF: created on the first add, when nlist can follow the data size

    @property
    def ntotal(self) -> int:
        return 0 if self.index is None else self.index.ntotal

    @property
    def nbytes(self) -> int:
        """Bytes held in RAM: vectors plus graph links (HNSW) or centroids and ids (IVF)."""
        if self.index is None:
            return 0
        vectors = self.ntotal * self.dim * 4
        if self.index_type == "hnsw":
            h = self.index.hnsw
            return vectors + h.neighbors.size() * 4 + h.levels.size() * 4 + h.offsets.size() * 8
        if self.index_type == "ivf":
            return vectors + self.ntotal * 8 + self.index.nlist * self.dim * 4
        return vectors

    def add(self, x: np.ndarray) -> None:
        if self.index is None:
            raise RuntimeError("An IVF level must be trained (FaissLevel.train) before vectors are added.")
        self.index.add(x)

    def train(self, sample: np.ndarray, nlist: int) -> None:
        """Create and train the IVF index (k-means with ``nlist`` centroids) on ``sample``."""
        if nlist > sample.shape[0]:
            raise ValueError(f"nlist={nlist} inverted lists need at least {nlist} vectors to train on, but the "
                             f"index holds {sample.shape[0]}; lower nlist (or leave it None for ~4*sqrt(n)).")
        f = self.faiss
        quantizer = f.IndexFlat(self.dim, self._metric_code)
        index = f.IndexIVFFlat(quantizer, self.dim, nlist, self._metric_code)
        index.cp.spherical = self.metric == "cosine"  # centroids on the unit sphere, like the data
        index.train(sample)
        self.index = index

    def search(self, queries: np.ndarray, k: int, nprobe: int = 16, ef_search: int = 64):
        f = self.faiss
        k, nprobe, ef_search = int(k), int(nprobe), int(ef_search)  # FAISS's SWIG setters take no np.int64
        if self.index_type == "hnsw":
            f.cvar.hnsw_stats.reset()
            scores, ids = self.index.search(queries, k, params=f.SearchParametersHNSW(efSearch=max(ef_search, k)))
            scored = f.cvar.hnsw_stats.ndis / max(len(queries), 1)
        elif self.index_type == "ivf":
            nprobe = min(nprobe, self.index.nlist)
            f.cvar.indexIVF_stats.reset()
            scores, ids = self.index.search(queries, k, params=f.SearchParametersIVF(nprobe=nprobe))
            scored = f.cvar.indexIVF_stats.ndis / max(len(queries), 1) + self.index.nlist
        else:
            scores, ids = self.index.search(queries, k)
            scored = float(self.ntotal)
        ids = ids.astype(np.int64, copy=False)
        scores[ids < 0] = worst_score(self.metric)  # FAISS fills empty slots with +-3.4e38, SearchResult with +-inf
        return scores, ids, scored

    def save(self, path: str) -> None:
        self.faiss.write_index(self.index, path)

    @classmethod
    def load(cls, path: str, dim: int, metric: str, index_type: str, params: dict) -> "FaissLevel":
        faiss = import_faiss()
        return cls(dim, metric, index_type, params, index=faiss.read_index(path))
