"""Compressed prefix codes and the FAISS structure that searches them: one ``CodeLevel`` per (dim, precision, structure).

Each database row is cut to its first ``dim`` features, L2-normalised on its own (``metric="cosine"``), and only
then quantised:

- ``float32``: the prefix as is (``IndexFlat``, ``IndexHNSWFlat``, ``IndexIVFFlat``);
- ``float16``: half floats (FAISS scalar quantiser ``QT_fp16``);
- ``int8``: 8 bits per feature with a range calibrated per dimension from the data (FAISS ``QT_8bit``: the
  min and max of each dimension over a training sample); queries stay float (asymmetric distance);
- ``int4``: the same with 4 bits (16 levels) per feature, two features per byte (FAISS ``QT_4bit``);
- ``pq4``: product quantisation, every pair of features coded as one of 16 centroids (4 bits) of a codebook
  trained on the data: 2 bits per feature, a quarter of a byte (FAISS ``PQ<dim/2>x4fs``); float queries are
  scored through per-query lookup tables held in SIMD registers ("fast-scan": a flat scan of 185k ``pq4@256``
  codes took 0.27 ms/query on 2 cores where FAISS's ``int4`` scan of the same prefix took 3.4). Flat or IVF only
  (FAISS has no fast-scan graph); IVF lists hold the codes of the vectors themselves, not of their residuals from
  the list centroids (FAISS's factory builds ``IVF..,PQ..x4fs`` with ``by_residual=False``). ``dim`` must be even;
- ``binary``: one sign bit per feature, searched by Hamming distance (``IndexBinaryFlat``/``HNSW``/``IVF``);
  the query is binarised too. ``dim`` must be a multiple of 8.
- ``binary-asymmetric``: the same sign bits, scored with the float query: the inner product of the query's prefix
  with the +-1 vector each code stands for (``mrl_hf.quantization.asymmetric_binary_scores``). Held as a FAISS
  fast-scan PQ whose 16 centroids per 4 features are the 16 sign patterns (so FAISS's encoder stores exactly the
  sign bits, 4 per half-byte) and scanned with its SIMD lookup tables (8-bit quantised: scores within ~0.003 of
  the exact ones, the re-rank restores them). Flat or IVF (lists of the codes themselves, not residuals).
  ``dim`` must be a multiple of 8.

Spilled IVF (``spill``): every vector's code is stored in two lists: its nearest centroid's and the one that
minimises SOAR's spilled-assignment loss (Sun et al., NeurIPS 2023, lambda 1: ``|x - c|^2`` plus the square of the new
residual's component along the first residual), so the second list covers the direction the first one errs in. The
codes are of the vectors themselves (not residuals), so the same code serves both lists. A search asks FAISS for
twice the candidates and keeps each id once.

The codes are what a plan keeps in RAM; the full float32 vectors are read only to re-rank the candidates.

AdANNS-IVF (``cluster_dim``): k-means runs on the normalised ``cluster_dim``-prefixes, and queries are routed to
their nearest lists at that prefix; the lists hold ``dim``-prefix codes. FAISS's IVF quantizer must have the
index's dim, so it holds the centroids zero-padded to ``dim``: a ``dim``-prefix scores against a padded centroid
exactly as its ``cluster_dim``-prefix does against the centroid, up to a positive factor (inner product) or a
per-vector constant (L2, Hamming), so vectors land in the same lists. Queries are routed by a separate
``cluster_dim`` index over the same centroids (``nlist * cluster_dim`` work, not ``nlist * dim``), and the lists
store the codes themselves, not residuals.
"""
from __future__ import annotations

import numpy as np

from ._faiss_backend import auto_nlist, import_faiss
from ._inputs import prefix

PRECISIONS = ("float32", "float16", "int8", "int4", "pq4", "binary", "binary-asymmetric")
BYTES_PER_DIM = {"float32": 4, "float16": 2, "int8": 1, "int4": 0.5, "pq4": 0.25, "binary": 0.125,
                 "binary-asymmetric": 0.125}
FAST_SCAN = ("pq4", "binary-asymmetric")  # FAISS fast-scan codes: flat or IVF, no graph, no AdANNS
FAST_SCAN_MIN_ROWS = 16  # FAISS trains their 16-centroid sub-quantizers on at least that many vectors
STRUCTURES = ("flat", "hnsw", "ivf")
_SQ_NAME = {"float32": "Flat", "float16": "SQfp16", "int8": "SQ8", "int4": "SQ4"}
_TRAIN_ROWS = 65536  # rows sampled to calibrate int8 ranges / train IVF centroids
_ADD_ROWS = 131072
_SPILL_CHOICES = 8  # nearest lists considered for a vector's second list
_SPILL_LAMBDA = 1.0  # SOAR's weight on the second residual's component along the first
_FAR = 1e9  # a coordinate no real vector comes near (see _add_spilled)


def _factory_string(precision: str, structure: str, hnsw_m: int, nlist: int, dim: int) -> str:
    if precision == "binary":
        return {"flat": "BFlat", "hnsw": f"BHNSW{hnsw_m}", "ivf": f"BIVF{nlist}"}[structure]
    fast_scan = {"pq4": f"PQ{dim // 2}x4fs", "binary-asymmetric": f"PQ{dim // 4}x4fs"}
    codes = fast_scan.get(precision) or _SQ_NAME[precision]
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
                 nlist: int | None = None, index=None, cluster_dim: int | None = None, ef_construction: int = 40,
                 spill: bool = False):
        self.faiss = import_faiss()
        self.dim, self.precision, self.structure, self.metric = dim, precision, structure, metric
        self.hnsw_m, self.nlist, self.cluster_dim, self.spill = hnsw_m, nlist, cluster_dim, spill
        self.ef_construction = ef_construction
        self.index = index
        self._router = None
        self._nbytes = None

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
        if self.precision in FAST_SCAN and n < FAST_SCAN_MIN_ROWS:
            raise ValueError(f"precision={self.precision!r} codes train 16-centroid codebooks on the index, which "
                             f"holds {n} vectors (fewer than {FAST_SCAN_MIN_ROWS}); use precision='binary' or 'int8', or "
                             "add more vectors first.")
        rows = np.arange(n) if n <= _TRAIN_ROWS else np.sort(
            np.random.default_rng(0).choice(n, _TRAIN_ROWS, replace=False))
        if self.cluster_dim is not None:
            self.index = self._adanns_index(database[rows])
        else:
            spec = _factory_string(self.precision, self.structure, self.hnsw_m, self.nlist or 1, self.dim)
            if self.binary:
                self.index = f.index_binary_factory(self.dim, spec)
            else:
                self.index = f.index_factory(self.dim, spec, self._faiss_metric)
            if self.structure == "hnsw":
                hnsw = self.index if self.binary else f.downcast_index(self.index)
                hnsw.hnsw.efConstruction = self.ef_construction
        if self.structure == "ivf" and (self.precision == "binary-asymmetric" or self.spill):
            f.extract_index_ivf(self.index).by_residual = False  # the lists hold the vectors' own codes
        if not self.index.is_trained:
            self.index.train(self._encode(database[rows]))
        if self.precision == "binary-asymmetric":
            self._use_sign_codebooks()
        self.add(database)
        return self

    def _use_sign_codebooks(self) -> None:
        """Every 4-feature sub-quantizer's 16 centroids become the 16 sign patterns (scaled to unit length at
        ``dim``): the nearest pattern to a chunk is its sign pattern, so the codes are the sign bits, and the
        lookup tables give ``q . sign(x) / sqrt(dim)``."""
        pq = self.faiss.downcast_index(self.index).pq
        patterns = ((np.arange(16)[:, None] >> np.arange(4)) & 1) * 2.0 - 1.0  # (16, 4), +-1
        centroids = np.tile(patterns, (pq.M, 1)) / np.sqrt(self.dim)
        self.faiss.copy_array_to_vector(np.ascontiguousarray(centroids, np.float32).ravel(), pq.centroids)

    @property
    def _faiss_metric(self):
        return self.faiss.METRIC_L2 if self.metric == "l2" else self.faiss.METRIC_INNER_PRODUCT

    def _adanns_index(self, sample: np.ndarray):
        """An untrained-codes IVF over ``dim``-prefixes whose lists come from k-means on ``cluster_dim``-prefixes."""
        f = self.faiss
        kmeans = f.Kmeans(self.cluster_dim, self.nlist, niter=20, seed=0, spherical=self.metric == "cosine")
        kmeans.train(prefix(sample, self.cluster_dim, self.metric))
        padded = np.zeros((self.nlist, self.dim), np.float32)
        padded[:, :self.cluster_dim] = kmeans.centroids
        if self.binary:
            quantizer = f.IndexBinaryFlat(self.dim)
            quantizer.add(sign_bits(padded))  # padded bits are 0: a per-query constant in every Hamming distance
            index = f.IndexBinaryIVF(quantizer, self.dim, self.nlist)
        else:
            quantizer = f.IndexFlat(self.dim, self._faiss_metric)
            quantizer.add(padded)
            if self.precision == "float32":
                index = f.IndexIVFFlat(quantizer, self.dim, self.nlist, self._faiss_metric)
            else:
                qtype = {"float16": f.ScalarQuantizer.QT_fp16, "int8": f.ScalarQuantizer.QT_8bit,
                         "int4": f.ScalarQuantizer.QT_4bit}[self.precision]
                index = f.IndexIVFScalarQuantizer(quantizer, self.dim, self.nlist, qtype, self._faiss_metric, False)
        index.own_fields = True  # the index keeps (and serialises) its quantizer
        quantizer.this.disown()
        return index

    def _route(self, queries: np.ndarray, nprobe: int) -> np.ndarray:
        """The ``nprobe`` lists nearest to each query at the ``cluster_dim`` prefix (AdANNS routing)."""
        f = self.faiss
        if self._router is None:
            ivf = self.index
            if self.binary:
                codes = f.vector_to_array(f.downcast_IndexBinary(ivf.quantizer).xb).reshape(ivf.nlist, self.dim // 8)
                self._router = f.IndexBinaryFlat(self.cluster_dim)
                self._router.add(np.ascontiguousarray(codes[:, :self.cluster_dim // 8]))
            else:
                centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)[:, :self.cluster_dim]
                self._router = f.IndexFlat(self.cluster_dim, self._faiss_metric)
                self._router.add(np.ascontiguousarray(centroids))
        routed = prefix(queries, self.cluster_dim, self.metric)
        _, lists = self._router.search(sign_bits(routed) if self.binary else routed, nprobe)
        return lists

    def add(self, x: np.ndarray) -> None:
        for s in range(0, x.shape[0], _ADD_ROWS):
            rows = self._encode(x[s:s + _ADD_ROWS])
            if self.precision == "binary-asymmetric":
                # an exact 0 is a - bit (sign_bits reads x > 0), but it is as near to a + centroid as to a -, and
                # FAISS's encoder picked either: a nudge below 0, far under any real feature, makes the - unique
                rows = np.where(rows == 0, np.float32(-1e-3 / np.sqrt(self.dim)), rows)
            if self.spill:
                self._add_spilled(rows)
            else:
                self.index.add(rows)
        self._nbytes = None

    def _add_spilled(self, x: np.ndarray) -> None:
        """Add the (encoded) rows ``x`` to their nearest list and to their SOAR second list.

        Not thread-safe: while it runs, the IVF's quantizer is a stand-in (a search from another thread would probe
        the wrong lists), as FAISS's own ``add`` is not safe to run next to a search either."""
        f, ivf = self.faiss, self.faiss.extract_index_ivf(self.index)
        first_id = self.ntotal
        choices = min(_SPILL_CHOICES, ivf.nlist)
        _, near = ivf.quantizer.search(x, choices)
        centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        residual = x - centroids[near[:, 0]]
        residual_sq = np.maximum(np.einsum("nd,nd->n", residual, residual), 1e-12)
        second, best = near[:, min(1, choices - 1)].copy(), np.full(len(x), np.inf)
        for j in range(1, choices):
            other = x - centroids[near[:, j]]
            loss = (np.einsum("nd,nd->n", other, other)
                    + _SPILL_LAMBDA * np.einsum("nd,nd->n", residual, other) ** 2 / residual_sq)
            better = loss < best
            best[better], second[better] = loss[better], near[better, j]
        lists = np.concatenate([near[:, 0], second])  # with one list only, both copies land in it
        rows = np.tile(np.arange(len(x)), 2)
        ids = first_id + rows.astype(np.int64)
        # FAISS's IVF add_core / add_sa_codes corrupt memory for fast-scan lists here (faiss 1.15), so each list's
        # rows go through the ordinary add_with_ids with a stand-in quantizer that puts every row in that list: an
        # L2 index whose entries are all far away except the list's own, at the origin.
        real_quantizer = ivf.quantizer
        stand_in = f.IndexFlatL2(ivf.d)
        stand_in.add(np.full((ivf.nlist, ivf.d), _FAR, np.float32))
        entries = f.rev_swig_ptr(stand_in.get_xb(), ivf.nlist * ivf.d).reshape(ivf.nlist, ivf.d)
        order = np.argsort(lists, kind="stable")
        bounds = np.searchsorted(lists[order], np.arange(ivf.nlist + 1))
        try:
            ivf.quantizer = stand_in
            for j in np.flatnonzero(np.diff(bounds)):
                members = order[bounds[j]:bounds[j + 1]]
                entries[j] = 0.0
                self.index.add_with_ids(np.ascontiguousarray(x[rows[members]]), ids[members])
                entries[j] = _FAR
        finally:
            ivf.quantizer = real_quantizer

    @property
    def ntotal(self) -> int:
        """Vectors held (each spilled vector counts once)."""
        return int(self.index.ntotal) // (2 if self.spill else 1)

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
            routing = ivf.nlist * (self.cluster_dim or self.dim) / self.dim  # centroids, in dim-sized dot products
            listed = 2 * n if self.spill else n  # a spilled vector sits in two lists
            scored = min(1.0, ivf.nprobe / ivf.nlist) * listed + routing  # expected list sizes, plus routing
        if self.spill:
            _, ids = self.index.search(self._encode(queries), min(2 * k, 2 * n))
            return first_occurrences(ids.astype(np.int64, copy=False), k), scored
        if self.cluster_dim is not None:
            lists = self._route(queries, ivf.nprobe)
            dummy = np.zeros(lists.shape, np.int32 if self.binary else np.float32)
            _, ids = ivf.search_preassigned(self._encode(queries), k, lists, dummy)
            return ids.astype(np.int64, copy=False), scored
        _, ids = self.index.search(self._encode(queries), k)
        if self.structure == "hnsw":
            scored = f.cvar.hnsw_stats.ndis / max(len(queries), 1)
        return ids.astype(np.int64, copy=False), scored

    def save(self, path: str) -> None:
        (self.faiss.write_index_binary if self.binary else self.faiss.write_index)(self.index, path)

    @classmethod
    def load(cls, path: str, dim: int, precision: str, structure: str, metric: str,
             cluster_dim: int | None = None, spill: bool = False) -> "CodeLevel":
        f = import_faiss()
        index = f.read_index_binary(path) if precision == "binary" else f.read_index(path)
        return cls(dim, precision, structure, metric, index=index, cluster_dim=cluster_dim, spill=spill)


def first_occurrences(ids: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` distinct ids of each row, in row order (-1 = empty, kept last; padded with -1)."""
    by_id = np.argsort(ids, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ids, by_id, 1)
    repeat = np.zeros_like(sorted_ids, dtype=bool)
    repeat[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    drop = np.empty_like(repeat)
    np.put_along_axis(drop, by_id, repeat | (sorted_ids < 0), 1)
    keep = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept slots first, each group in row order
    out = np.where(np.take_along_axis(drop, keep, 1), -1, np.take_along_axis(ids, keep, 1))
    return np.pad(out, ((0, 0), (0, k - out.shape[1])), constant_values=-1) if out.shape[1] < k else out
