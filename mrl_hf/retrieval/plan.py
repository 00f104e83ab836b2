"""A search plan: shortlist on compressed prefix codes, then re-rank the candidates at the full dim in float32.

``SearchPlan(dim=256, precision="binary", structure="hnsw", candidates=200)`` reads: keep the sign bits of the
normalised 256-dim prefixes in RAM, in an HNSW graph; take the 200 nearest by Hamming distance; score those 200
exactly with the stored full-size float32 vectors (which may be memory-mapped from disk: only the candidates'
rows are read, in one vectorised gather) and return the best ``top_k``.

``SearchPlan(dim=128, precision="int8", structure="ivf", cluster_dim=32, nprobe=16)`` is the AdANNS-IVF of Rege et
al. (NeurIPS 2023): the inverted lists are clustered (k-means) and routed at the 32-dim prefix, and the vectors in
the probed lists are scanned at the 128-dim prefix.

``SearchPlan(dim=384, precision="pq4", structure="ivf", nprobe=32, spill=True)`` stores every vector's code in two
inverted lists, its nearest and a second one chosen as SOAR does (Sun et al., NeurIPS 2023): twice the codes and ids
in RAM, and a neighbour that sits near a list boundary is found from either side, so far fewer lists need probing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..nesting import as_int
from .codes import FAST_SCAN, PRECISIONS, STRUCTURES


def structure_label(structure: str, cluster_dim: int | None = None, hnsw_m: int | None = None,
                    spill: bool = False) -> str:
    """``"ivf"``, ``"ivf@32"`` for IVF clustered at the 32-dim prefix (AdANNS), ``"ivf+spill"`` for IVF storing each
    vector in two lists, ``"hnsw M=8"`` for a graph of 8 links per vector."""
    if hnsw_m is not None:
        return f"{structure} M={hnsw_m}"
    if spill:
        return f"{structure}+spill"
    return structure if cluster_dim is None else f"{structure}@{cluster_dim}"


@dataclass(frozen=True)
class SearchPlan:
    """One shortlist stage on codes plus a float32 re-rank at the full dim.

    Args:
        dim: prefix size the shortlist is computed at (a multiple of 8 for ``precision="binary"``).
        precision: ``"float32"``, ``"float16"``, ``"int8"`` / ``"int4"`` (per-dimension calibrated ranges),
            ``"pq4"`` (4-bit product quantisation of each pair of features, SIMD fast-scan; flat or IVF, even
            ``dim``), ``"binary"`` (sign bits, Hamming distance) or ``"binary-asymmetric"`` (the same bits scored
            with the float query; flat or IVF).
        structure: ``"flat"`` (scan every code), ``"hnsw"`` (graph, ``ef_search``) or ``"ivf"`` (inverted
            lists, ``nprobe``).
        candidates: shortlist length re-ranked at the full dim (at least ``top_k``).
        ef_search / nprobe: search-time knobs of HNSW / IVF; ``None`` uses the index's ``ef_search``/``nprobe``.
        cluster_dim: IVF only (AdANNS): the prefix size the lists are clustered and routed at, smaller than ``dim``
            (a multiple of 8 for binary codes); ``None`` clusters at ``dim`` (plain IVF).
        hnsw_m: HNSW only: links per vector of the graph (FAISS's M; 2 * M at the bottom layer), which sets most of
            a graph plan's RAM; ``None`` uses the index's ``hnsw_m``.
        spill: IVF only: store each vector in two lists (its nearest, and the one SOAR's spilling picks: near the
            vector, and off the direction of its residual from the first list's centroid), so a probe of either
            finds it. Twice the codes and ids in RAM; fewer probes for the same recall (on 185k real MiniLM vectors,
            ``pq4@384`` with 512 lists: 0.99 recall at 32 probes instead of 96). Not for ``"binary"`` (Hamming) codes
            or AdANNS ``cluster_dim``.
    """

    dim: int
    precision: str = "float32"
    structure: str = "flat"
    candidates: int = 100
    ef_search: int | None = None
    nprobe: int | None = None
    cluster_dim: int | None = None
    hnsw_m: int | None = None
    spill: bool = False

    def __post_init__(self):
        # numpy ints are kept as Python ints: FAISS and json take no np.int64
        object.__setattr__(self, "dim", as_int(self.dim, "SearchPlan.dim", minimum=1))
        object.__setattr__(self, "candidates", as_int(self.candidates, "SearchPlan.candidates", minimum=1))
        if self.precision not in PRECISIONS:
            raise ValueError(f"SearchPlan.precision={self.precision!r} is not supported; choose one of {PRECISIONS}.")
        if self.structure not in STRUCTURES:
            raise ValueError(f"SearchPlan.structure={self.structure!r} is not supported; choose one of {STRUCTURES}.")
        if self.precision.startswith("binary") and self.dim % 8:
            raise ValueError(f"SearchPlan(dim={self.dim}, precision={self.precision!r}): binary codes pack 8 sign "
                             f"bits per byte, so dim must be a multiple of 8; use dim={max(8, self.dim // 8 * 8)}.")
        if self.precision == "pq4" and self.dim % 2:
            raise ValueError(f"SearchPlan(dim={self.dim}, precision='pq4'): pq4 codes each pair of features as "
                             f"one 4-bit code, so dim must be even; use dim={self.dim - 1 or 2}.")
        if self.precision in FAST_SCAN:
            graph = {"pq4": "precision='int4'", "binary-asymmetric": "precision='binary' (Hamming)"}[self.precision]
            if self.structure == "hnsw":
                raise ValueError(f"SearchPlan(precision={self.precision!r}, structure='hnsw'): these codes are scanned "
                                 f"with FAISS's fast-scan, which has no graph; use structure='ivf' (or 'flat'), or "
                                 f"{graph} for a graph.")
            if self.cluster_dim is not None:
                raise ValueError(f"SearchPlan(precision={self.precision!r}, cluster_dim={self.cluster_dim}): AdANNS-"
                                 f"IVF lists hold scalar or Hamming codes; use cluster_dim=None, or {graph}.")
        for name in ("ef_search", "nprobe", "cluster_dim"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, as_int(getattr(self, name), f"SearchPlan.{name}", minimum=1))
        if self.hnsw_m is not None:
            object.__setattr__(self, "hnsw_m", as_int(self.hnsw_m, "SearchPlan.hnsw_m", minimum=2))
            if self.structure != "hnsw":
                raise ValueError(f"SearchPlan(structure={self.structure!r}, hnsw_m={self.hnsw_m}): hnsw_m sets the "
                                 "links of an HNSW graph, so it needs structure='hnsw'; drop hnsw_m or use "
                                 "structure='hnsw'.")
        if self.cluster_dim is not None:
            if self.structure != "ivf":
                raise ValueError(f"SearchPlan(structure={self.structure!r}, cluster_dim={self.cluster_dim}): "
                                 "cluster_dim sets the prefix size IVF lists are clustered at, so it needs "
                                 "structure='ivf'; drop cluster_dim or use structure='ivf'.")
            if self.cluster_dim >= self.dim:
                raise ValueError(f"SearchPlan(dim={self.dim}, cluster_dim={self.cluster_dim}): cluster_dim must be "
                                 f"smaller than dim (AdANNS routes on a shorter prefix than it scans); use "
                                 f"cluster_dim=None for plain IVF at dim={self.dim}.")
            if self.precision == "binary" and self.cluster_dim % 8:
                raise ValueError(f"SearchPlan(precision='binary', cluster_dim={self.cluster_dim}): binary centroids "
                                 f"pack 8 bits per byte, so cluster_dim must be a multiple of 8; use "
                                 f"cluster_dim={max(8, self.cluster_dim // 8 * 8)}.")
        if not isinstance(self.spill, bool):
            raise TypeError(f"SearchPlan.spill must be True or False, got {self.spill!r}.")
        if self.spill:
            if self.structure != "ivf":
                raise ValueError(f"SearchPlan(structure={self.structure!r}, spill=True): spilling stores vectors in a "
                                 "second inverted list, so it needs structure='ivf'; drop spill or use "
                                 "structure='ivf'.")
            if self.precision == "binary":
                raise ValueError("SearchPlan(precision='binary', spill=True): FAISS's binary IVF cannot take a "
                                 "second list per vector; use precision='binary-asymmetric' (the same sign bits) or "
                                 "drop spill.")
            if self.cluster_dim is not None:
                raise ValueError(f"SearchPlan(cluster_dim={self.cluster_dim}, spill=True): spilled lists are "
                                 "clustered at the plan's dim; use cluster_dim=None or drop spill.")

    def code_key(self, index_hnsw_m: int) -> tuple[int, str, str, int | None, int | None, bool]:
        """What identifies the plan's codes and structure in an index whose own ``hnsw_m`` is ``index_hnsw_m``:
        (dim, precision, structure, cluster_dim, links per vector of an HNSW graph, spill)."""
        m = (self.hnsw_m or index_hnsw_m) if self.structure == "hnsw" else None
        return (self.dim, self.precision, self.structure, self.cluster_dim, m, self.spill)

    @property
    def structure_label(self) -> str:
        return structure_label(self.structure, self.cluster_dim, self.hnsw_m, self.spill)

    def describe(self) -> str:
        knob = {"hnsw": f" ef={self.ef_search}" if self.ef_search else "",
                "ivf": f" nprobe={self.nprobe}" if self.nprobe else "", "flat": ""}[self.structure]
        return f"{self.precision}@{self.dim} {self.structure_label}{knob} -> {self.candidates} -> float32@full"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SearchPlan":
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown SearchPlan fields {sorted(unknown)}; expected {list(cls.__dataclass_fields__)}.")
        return cls(**data)


def check_plan(plan, index_dim: int, metric: str, top_k: int) -> SearchPlan:
    """``plan`` checked against an index of ``index_dim``-dim vectors and a search for ``top_k``."""
    if isinstance(plan, dict):
        plan = SearchPlan.from_dict(plan)
    if not isinstance(plan, SearchPlan):
        raise TypeError(f"plan must be a SearchPlan (or its dict), got {type(plan).__name__}; e.g. "
                        f"SearchPlan(dim=64, precision='binary', candidates=200).")
    if plan.dim > index_dim:
        raise ValueError(f"{plan} shortlists at dim={plan.dim}, but the index stores {index_dim}-dim vectors; "
                         f"choose dim <= {index_dim}.")
    if plan.candidates < top_k:
        raise ValueError(f"{plan} keeps {plan.candidates} candidates, fewer than top_k={top_k}; raise candidates "
                         "or lower top_k.")
    if plan.precision.startswith("binary") and metric == "l2":
        raise ValueError("binary (sign-bit) codes rank by angle and do not fit metric='l2'; use precision 'int8', "
                         "'float16' or 'float32', or an index with metric='cosine'.")
    return plan
