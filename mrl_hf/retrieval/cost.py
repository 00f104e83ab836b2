"""Cost accounting: MFLOPs of the dot products per query, counted as the paper counts, next to wall-clock.

The paper (Appendix E/F, Tables 8-14) counts one multiply-add per dimension per scored vector: exact
search over N vectors at dim d costs ``N * d / 1e6`` MFLOPs (ImageNet-1K, N=1.28M, d=2048: 2624), and a
re-rank of k candidates at dim d adds ``k * d / 1e6``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StageCost:
    """One stage of a search: ``kind`` is ``"search"`` (over the database) or ``"rerank"`` (of a shortlist)."""

    kind: str
    dim: int
    scored_per_query: float  # vectors whose dot product with the query was computed (mean over queries)
    index_type: str = "flat"  # what answered a "search" stage: flat (exhaustive), hnsw or ivf

    @property
    def mflops_per_query(self) -> float:
        return self.scored_per_query * self.dim / 1e6


@dataclass(frozen=True)
class SearchCost:
    """What one call to ``MatryoshkaIndex.search``/``adaptive_search``/``funnel_search`` cost.

    ``mflops_per_query`` counts the dot products actually computed (for HNSW/IVF, the distances FAISS
    reports computing, centroids included). ``exact_mflops_per_query`` counts the first stage as an
    exhaustive scan of the database, which is how the paper reports adaptive retrieval costs.
    ``seconds`` is the wall-clock of the search; ``ms_per_query`` divides it by the number of queries
    (batch throughput, not single-query latency). ``build_seconds`` is the time spent first building a
    search structure inside the call (0 when it was already built), kept out of ``seconds``.
    """

    stages: tuple[StageCost, ...]
    n_database: int
    n_queries: int
    seconds: float
    build_seconds: float = 0.0

    @property
    def mflops_per_query(self) -> float:
        return sum(s.mflops_per_query for s in self.stages)

    @property
    def exact_mflops_per_query(self) -> float:
        if not self.stages:
            return 0.0
        first, rest = self.stages[0], self.stages[1:]
        return self.n_database * first.dim / 1e6 + sum(s.mflops_per_query for s in rest)

    @property
    def ms_per_query(self) -> float:
        return 1e3 * self.seconds / max(self.n_queries, 1)

    def __str__(self) -> str:
        path = " -> ".join(f"{s.kind}@{s.dim}({s.index_type if s.kind == 'search' else int(s.scored_per_query)})"
                           for s in self.stages)
        return (f"{path}: {self.mflops_per_query:.3f} MFLOPs/query "
                f"({self.exact_mflops_per_query:.3f} with an exhaustive first stage), "
                f"{self.ms_per_query:.4f} ms/query over {self.n_queries} queries")


class SearchResult(tuple):
    """``(scores, ids)``, each of shape ``(n_queries, top_k)``, plus ``.cost`` (a ``SearchCost``).

    Unpacks like FAISS results: ``scores, ids = index.search(queries, 10)``. Scores are similarities
    (higher first) for ``cosine`` and ``ip``, squared L2 distances (lower first) for ``l2``. An id of -1
    marks a slot an approximate index could not fill (its score is -inf, or +inf for ``l2``).
    """

    def __new__(cls, scores: np.ndarray, ids: np.ndarray, cost: SearchCost):
        obj = super().__new__(cls, (scores, ids))
        obj.cost = cost
        return obj

    def __reduce__(self):  # pickle and copy rebuild it with all three arguments (the tuple protocol passes one)
        return SearchResult, (self[0], self[1], self.cost)

    @property
    def scores(self) -> np.ndarray:
        return self[0]

    @property
    def ids(self) -> np.ndarray:
        return self[1]

    def __repr__(self) -> str:
        return f"SearchResult(scores.shape={self[0].shape}, ids.shape={self[1].shape}, cost={self.cost})"
