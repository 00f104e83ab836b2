"""Pick a search plan by measurement: try plans on the user's held-out queries, keep the cheapest that is accurate.

Recall is top-k overlap with exact float32 search at the full dim over the same index (k-recall@k; a returned
vector whose exact score ties the k-th counts as found, as ann-benchmarks counts it), so the queries should look
like production queries (held out from the database). ``ms_per_query`` is the wall-clock
of searching all the queries in one batch divided by their number (throughput, not single-query latency).
RAM is what the plan keeps in memory per vector (codes + structure + cosine re-rank norms); the full float32
vectors used by the re-rank are not counted, as they can stay on disk (``MatryoshkaIndex.load(..., mmap=True)``).
"""
from __future__ import annotations

import numbers
import time
from dataclasses import dataclass, field

import numpy as np

from ..evaluation import tie_aware_overlap
from ..nesting import as_int
from .codes import BYTES_PER_DIM, FAST_SCAN, FAST_SCAN_MIN_ROWS, PRECISIONS, STRUCTURES
from .plan import SearchPlan, check_plan

OBJECTIVES = ("ram", "latency")
DEFAULT_CANDIDATES = (20, 50, 100, 200, 500, 1000)
_PLATEAU = 0.001  # a larger shortlist that gains less recall than this ends the candidates loop


@dataclass(frozen=True)
class PlanReport:
    """One measured plan."""

    plan: SearchPlan
    ram_bytes_per_vector: float
    ms_per_query: float
    recall: float
    meets_target: bool

    def row(self, chosen: bool = False) -> list[str]:
        p = self.plan
        knob = {"hnsw": p.ef_search, "ivf": p.nprobe, "flat": None}[p.structure]
        label = p.structure_label
        structure = label if knob is None else f"{label} ({'ef' if p.structure == 'hnsw' else 'nprobe'}={knob})"
        return [f"{p.dim}", p.precision, structure, f"{p.candidates}", f"{self.ram_bytes_per_vector:,.1f}",
                f"{self.ms_per_query:.3f}", f"{self.recall:.4f}", ("**chosen**" if chosen else
                                                                    "yes" if self.meets_target else "no")]


HEADER = ["dims", "precision", "structure", "candidates", "RAM B/vector", "ms/query", "recall@k", "meets target"]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


@dataclass
class TuneResult:
    """The chosen plan and every plan measured (``reports``); ``str(result)`` is the table."""

    plan: SearchPlan
    objective: str
    target_recall: float
    top_k: int
    reports: list[PlanReport]
    exact_ms_per_query: float
    skipped: list[tuple] = field(default_factory=list)  # code keys (index.code_key) left out by budget_s
    over_budget: list[tuple] = field(default_factory=list)  # code keys over max_ram_bytes_per_vector

    @property
    def chosen(self) -> PlanReport:
        return next(r for r in self.reports if r.plan == self.plan)

    def pareto(self) -> list[PlanReport]:
        """Plans no other plan beats on RAM, ms/query and recall at once, by RAM."""
        def dominated(a, b):  # b at least as good as a everywhere and better somewhere
            ge = (b.ram_bytes_per_vector <= a.ram_bytes_per_vector and b.ms_per_query <= a.ms_per_query
                  and b.recall >= a.recall)
            return ge and (b.ram_bytes_per_vector, b.ms_per_query, -b.recall) != \
                (a.ram_bytes_per_vector, a.ms_per_query, -a.recall)
        front = [a for a in self.reports if not any(dominated(a, b) for b in self.reports)]
        return sorted(front, key=lambda r: (r.ram_bytes_per_vector, r.ms_per_query))

    def table(self, pareto_only: bool = False) -> str:
        rows = self.pareto() if pareto_only else self.reports
        return markdown_table([h.replace("@k", f"@{self.top_k}") for h in HEADER],
                              [r.row(r.plan == self.plan) for r in rows])

    def __str__(self) -> str:
        head = (f"target recall@{self.top_k} >= {self.target_recall} (vs exact float32 at full dim, "
                f"{self.exact_ms_per_query:.3f} ms/query), objective={self.objective}: chosen "
                f"{self.plan.describe()}")
        skipped = f"\n(skipped by budget_s: {self.skipped})" if self.skipped else ""
        if self.over_budget:
            skipped += f"\n(over the RAM budget, not searched: {self.over_budget})"
        return f"{head}\n{self.table()}{skipped}"


class NoPlanMeetsTarget(ValueError):
    """No plan tried reached the target; ``closest`` is the most accurate one, ``reports`` all of them."""

    def __init__(self, message: str, reports: list[PlanReport], closest: PlanReport):
        super().__init__(message)
        self.reports, self.closest = reports, closest


def default_dims(dim: int) -> list[int]:
    """Powers of two from 32 below ``dim``, and ``dim`` itself."""
    dims, d = [], 32
    while d < dim:
        dims.append(d)
        d *= 2
    return dims + [dim]


def _valid_plan(index, dim: int, precision: str, structure: str, cluster_dim: int | None, spill: bool) -> bool:
    """Whether a plan of these codes exists for ``index`` (the grid skips the ones SearchPlan / check_plan refuse,
    e.g. binary at a dim that is not a multiple of 8, fast-scan codes in a graph)."""
    try:
        check_plan(SearchPlan(dim, precision, structure, 1, cluster_dim=cluster_dim, spill=spill), index.dim,
                   index.metric, 1)
    except ValueError:
        return False
    return precision not in FAST_SCAN or index.ntotal >= FAST_SCAN_MIN_ROWS  # their codebooks need that many rows


def _grid(index, dims, precisions, structures, cluster_dims, hnsw_ms, spills) -> list[tuple]:
    dims = default_dims(index.dim) if dims is None else [as_int(d, "dims entry", minimum=1) for d in dims]
    for d in dims:
        if d > index.dim:
            raise ValueError(f"dims entry {d} exceeds the index's stored size {index.dim}; choose dims <= {index.dim}.")
    for p in precisions:
        if p not in PRECISIONS:
            raise ValueError(f"precisions entry {p!r} is not supported; choose from {PRECISIONS}.")
    for s in structures:
        if s not in STRUCTURES:
            raise ValueError(f"structures entry {s!r} is not supported; choose from {STRUCTURES}.")
    cluster_dims = [None if c is None else as_int(c, "cluster_dims entry", minimum=1) for c in cluster_dims]
    own_m = index._build_params["hnsw_m"]
    hnsw_ms = sorted({own_m if m is None else as_int(m, "hnsw_m entry", minimum=2) for m in hnsw_ms})
    if isinstance(spills, bool):
        raise TypeError(f"spill={spills!r} must list the settings to try, e.g. spill=(False, True).")
    for v in spills:
        if not isinstance(v, (bool, np.bool_)):
            raise TypeError(f"spill entries must be True or False, got {v!r}; e.g. spill=(False, True).")
    spills = [bool(v) for v in spills]
    keys = [(d, p, s, c, m, v) for d in dims for p in precisions for s in structures
            for c in (cluster_dims if s == "ivf" else [None]) for m in (hnsw_ms if s == "hnsw" else [None])
            for v in (sorted(set(spills)) if s == "ivf" else [False])
            if _valid_plan(index, d, p, s, c, v)]
    return sorted(keys, key=lambda k: (k[0] * BYTES_PER_DIM[k[1]], STRUCTURES.index(k[2]), k[3] or 0, k[4] or 0,
                                       k[5]))


def tune(index, queries, target_recall: float = 0.99, objective: str = "ram", top_k: int = 10, *,
         dims=None, precisions=PRECISIONS, structures=("flat", "hnsw", "ivf"), candidates=DEFAULT_CANDIDATES,
         ef_search=(None,), nprobe=(None,), cluster_dims=(None,), budget_s: float | None = None,
         repeats: int = 1, max_ram_bytes_per_vector: float | None = None, hnsw_m=(None,),
         spill=(False,)) -> TuneResult:
    """Measure plans over the grid ``dims x precisions x structures x (ef_search | nprobe) x candidates``.

    ``cluster_dims`` adds AdANNS-IVF structures: each entry smaller than a plan's dim (``None`` is plain IVF) clusters
    and routes the IVF lists at that prefix size (``SearchPlan.cluster_dim``). ``hnsw_m`` lists the graph sizes
    (links per vector, ``SearchPlan.hnsw_m``) tried for HNSW structures; ``None`` is the index's own. ``spill=(False,
    True)`` also tries every IVF structure with each vector stored in two lists (``SearchPlan.spill``).

    For each code structure the candidates are tried in increasing order and stop at the first count that
    reaches ``target_recall`` (more only costs more) or that gains less than 0.001 recall over the previous
    count (then the structure's nprobe/ef_search, not the shortlist, bounds recall), unless the next count exceeds
    an HNSW plan's ef_search: the graph is searched with a beam of max(ef_search, candidates), so it widens there.
    ``budget_s`` bounds the tuning time: once spent, no new
    code structure is built (they are tried smallest codes first). ``objective="ram"`` keeps the plan with
    the least RAM per vector (ties: fastest), ``"latency"`` the fastest (ties: least RAM). ``repeats`` timed
    runs per plan, the fastest kept.

    ``max_ram_bytes_per_vector`` is a RAM budget (codes + structure + norms, as ``plan_memory`` counts): code
    structures over it are not searched (those whose codes alone exceed it are not even built) and are listed in
    ``result.over_budget``; e.g. ``objective="latency", max_ram_bytes_per_vector=hnsw_bytes / 8`` asks for the
    fastest plan that reaches the target in an eighth of the RAM.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r} is not supported; choose one of {OBJECTIVES}.")
    # one value where the grid takes several: precisions="int8" is ("int8",), not its letters
    dims, precisions, structures, candidates, ef_search, nprobe, cluster_dims, hnsw_m = (
        (v,) if isinstance(v, (str, numbers.Integral)) or v is None else v
        for v in (dims, precisions, structures, candidates, ef_search, nprobe, cluster_dims, hnsw_m))
    if dims == (None,):
        dims = None
    if isinstance(target_recall, (bool, np.bool_)) or not isinstance(target_recall, numbers.Real) or \
            not 0 < target_recall <= 1:
        raise ValueError(f"target_recall={target_recall!r} must be a number in (0, 1], e.g. 0.99.")
    top_k = as_int(top_k, "top_k", minimum=1)
    repeats = as_int(repeats, "repeats", minimum=1)
    budget = max_ram_bytes_per_vector
    if budget is not None and (isinstance(budget, (bool, np.bool_)) or not isinstance(budget, numbers.Real)
                               or not budget > 0):
        raise ValueError(f"max_ram_bytes_per_vector={max_ram_bytes_per_vector!r} must be a number of bytes > 0 "
                         "(or None for no RAM budget), e.g. 64.")
    counts = sorted({as_int(c, "candidates entry", minimum=1) for c in candidates})
    counts = [c for c in counts if c >= top_k] or [top_k]
    q = index._check_queries(queries, index.dim)
    if q.shape[0] == 0:
        raise ValueError("tune needs at least one held-out query (ideally hundreds, unseen by the database).")
    start = time.perf_counter()
    reference = index.search(q, top_k, exact=True)
    reports, skipped, over_budget = [], [], []
    largest_tried = 0
    for key in _grid(index, dims, precisions, structures, cluster_dims, hnsw_m, spill):
        dim, precision, structure, cluster_dim, m, spilled = key
        structure_of = dict(cluster_dim=cluster_dim, hnsw_m=None if m == index._build_params["hnsw_m"] else m,
                            spill=spilled)
        if budget_s is not None and time.perf_counter() - start > budget_s and key not in index._codes:
            skipped.append(key)
            continue
        if max_ram_bytes_per_vector is not None and (
                (2 if spilled else 1) * dim * BYTES_PER_DIM[precision] > max_ram_bytes_per_vector  # codes alone
                or index.plan_memory(SearchPlan(dim, precision, structure, top_k, **structure_of))["ram"]
                > max_ram_bytes_per_vector):
            over_budget.append(key)
            continue
        knobs = {"hnsw": [("ef_search", v) for v in ef_search], "ivf": [("nprobe", v) for v in nprobe],
                 "flat": [(None, None)]}[structure]
        for knob, value in knobs:
            previous = -1.0
            # an HNSW search runs with a beam of max(ef_search, candidates): past the beam, more candidates widen it
            beam = (value or index.ef_search) if structure == "hnsw" else None
            for i, c in enumerate(counts):
                plan = SearchPlan(dim, precision, structure, c, **structure_of, **({knob: value} if knob else {}))
                result = min((index.search_plan(q, top_k, plan) for _ in range(repeats)),
                             key=lambda r: r.cost.seconds)
                recall = tie_aware_overlap(result.ids, result.scores, reference.ids, reference.scores, top_k,
                                           index.metric)
                reports.append(PlanReport(plan, index.plan_memory(plan)["ram"], result.cost.ms_per_query, recall,
                                          recall >= target_recall))
                largest_tried = max(largest_tried, c)
                widens_beam = beam is not None and i + 1 < len(counts) and counts[i + 1] > beam
                if recall >= target_recall or (recall <= previous + _PLATEAU and not widens_beam):
                    break  # met, or more candidates stopped helping (the structure's probes/ef bound recall)
                previous = recall
    if not reports:
        raise ValueError("tune tried no plan: the grid is empty (binary needs dims that are multiples of 8 and a "
                         "metric other than 'l2'), budget_s ran out before the first, or every structure is over "
                         f"max_ram_bytes_per_vector={max_ram_bytes_per_vector} ({len(over_budget)} were); widen the "
                         "grid (smaller dims, binary codes), budget_s or the RAM budget.")
    order = (lambda r: (r.ram_bytes_per_vector, r.ms_per_query)) if objective == "ram" else \
        (lambda r: (r.ms_per_query, r.ram_bytes_per_vector))
    meeting = [r for r in reports if r.meets_target]
    if not meeting:
        closest = max(reports, key=lambda r: (r.recall, -order(r)[0]))
        raise NoPlanMeetsTarget(
            f"No plan reached recall@{top_k} >= {target_recall} on these {q.shape[0]} queries ({len(reports)} tried"
            f"{f', {len(skipped)} structures skipped by budget_s' if skipped else ''}"
            f"{f', {len(over_budget)} over the RAM budget' if over_budget else ''}). Closest: "
            f"{closest.plan.describe()} with recall {closest.recall:.4f} ({closest.ram_bytes_per_vector:.1f} B/vector, "
            f"{closest.ms_per_query:.3f} ms/query). Allow more candidates (largest tried: {largest_tried}), larger "
            "dims or higher precisions, a larger ef_search/nprobe, or lower target_recall.", reports, closest)
    best = min(meeting, key=order)
    return TuneResult(best.plan, objective, float(target_recall), top_k, reports, reference.cost.ms_per_query,
                      skipped, over_budget)
