"""MatryoshkaIndex: one database of Matryoshka embeddings, searched at any prefix dim.

Single-shot search at one dim, adaptive retrieval (shortlist at D_s, re-rank at D_r) and funnel retrieval
(a cascade of re-ranks at growing dims with shrinking shortlists), as in Section 4.3 and Appendix F of
Kusupati et al. (2022). The database is stored once, at full size; a search structure is built per dim
that is searched over the whole database (lazily on first use, or eagerly with ``build``), while
re-ranking gathers the candidates' prefixes from the stored embeddings.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ..nesting import as_int, validate_dim
from ..saving import owned_files, reading
from ._faiss_backend import INDEX_TYPES, FaissLevel, auto_nlist, import_faiss
from ..embeddings import as_float32_matrix
from ._inputs import check_metric, prefix
from ._rerank import prefix_norms, rerank
from ._torch_backend import TorchFlatLevel
from .codes import CodeLevel
from .cost import SearchCost, SearchResult, StageCost
from .plan import SearchPlan, check_plan, structure_label

PAPER_FUNNEL_DIMS = (16, 32, 64, 128, 256)
PAPER_FUNNEL_SHORTLISTS = (200, 100, 50, 25, 10)
_FORMAT = "mrl_hf.MatryoshkaIndex"
_FORMAT_VERSION = 1
_CONFIG_FILE = "mrl_index.json"
_EMBEDDINGS_FILE = "embeddings.npy"
_ADD_CHUNK_ROWS = 262144  # rows prepared at a time when filling a search structure
_IVF_TRAIN_PER_LIST = 64  # k-means sample per inverted list (FAISS warns below 39)


_CONFIG_KEYS = ("dim", "metric", "backend", "index_type", "hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe",
                "ntotal", "saved_levels")


def _read_config(config_file: Path) -> dict:
    try:
        config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(config_file)!r} is not valid JSON ({exc}); the saved index is damaged. Re-save the "
                         "index (mrl_hf saves are atomic, so a killed save does not cause this).") from exc
    if not isinstance(config, dict) or config.get("format") != _FORMAT or config.get("format_version", 0) > \
            _FORMAT_VERSION:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{str(config_file)!r} is not a MatryoshkaIndex this version can read (format={found!r}); "
                         "save the index again with this version of mrl_hf.")
    missing = [key for key in _CONFIG_KEYS if key not in config]
    if missing:
        raise ValueError(f"{str(config_file)!r} lacks {missing}; the saved index is damaged. Re-save the index.")
    return config


def _sorted_codes(codes: dict):
    return sorted(codes.items(), key=lambda item: (*item[0][:3], item[0][3] or 0, item[0][4] or 0, item[0][5]))


def _code_file(key, index_hnsw_m: int) -> str:
    """``codes_<dim>_<precision>_<structure>[_c<cluster_dim>][_m<hnsw_m>][_spill].faiss``; ``_m`` only where the
    graph's links differ from the index's ``hnsw_m`` (so folders saved before per-plan graphs keep their names)."""
    d, precision, structure, cluster_dim, m, spill = key
    return (f"codes_{d}_{precision}_{structure}{'' if cluster_dim is None else f'_c{cluster_dim}'}"
            f"{'' if m in (None, index_hnsw_m) else f'_m{m}'}{'_spill' if spill else ''}.faiss")


def _saved_code_key(saved: list, index_hnsw_m: int) -> tuple:
    """A ``saved_codes`` entry as a code key: [dim, precision, structure] (before AdANNS), + cluster_dim (before
    per-plan graphs), + hnsw_m (before spilled IVF), + spill."""
    d, precision, structure, cluster_dim, m, spill = (*saved, None, None, False)[:6]
    if structure == "hnsw" and m is None:
        m = index_hnsw_m
    return (d, precision, structure, cluster_dim, m, bool(spill))


def default_funnel_steps(dim: int, top_k: int = 10) -> list[tuple[int, int]]:
    """The paper's funnel for a ``dim``-sized database: 16->32->64->128->256->dim, keeping 200->100->50->25->10.

    Each step is ``(dim, keep)``. Dims not below ``dim`` are dropped, the last step re-ranks at ``dim`` and
    keeps ``top_k``, and every shortlist is floored at ``top_k`` (with ``top_k=10`` this is the paper's
    funnel exactly).
    """
    dim = as_int(dim, "dim", minimum=1)
    top_k = as_int(top_k, "top_k", minimum=1)
    steps = [(d, max(k, top_k)) for d, k in zip(PAPER_FUNNEL_DIMS, PAPER_FUNNEL_SHORTLISTS) if d < dim]
    return steps + [(dim, top_k)]


def _resolve_backend(backend: str, index_type: str) -> str:
    if index_type not in INDEX_TYPES:
        raise ValueError(f"index_type={index_type!r} is not supported; choose one of {INDEX_TYPES}.")
    if backend == "faiss":
        import_faiss()
        return "faiss"
    if backend == "torch":
        if index_type != "flat":
            raise ValueError(f"index_type={index_type!r} needs backend='faiss'; the torch backend only does exact "
                             "(flat) search. Install faiss with pip install 'mrl-hf[faiss]' or use index_type='flat'.")
        return "torch"
    if backend == "auto":
        try:
            import_faiss()
            return "faiss"
        except ImportError:
            if index_type != "flat":
                raise
            return "torch"
    raise ValueError(f"backend={backend!r} is not supported; choose 'auto', 'faiss' or 'torch'.")


class MatryoshkaIndex:
    """An index over a database of Matryoshka embeddings that answers search at any prefix dim.

    Args:
        embeddings: ``(n, d)`` float32 numpy array or torch tensor. ``n`` may be 0.
        metric: ``"cosine"`` (each prefix ``x[:, :m]`` is L2-normalised on its own before scoring at dim
            ``m``), ``"ip"`` (raw inner product of prefixes) or ``"l2"`` (squared L2 distance of prefixes).
        backend: ``"faiss"``, ``"torch"`` (exact search only, no extra dependency) or ``"auto"`` (FAISS when
            installed).
        index_type: structure used wherever the whole database is searched: ``"flat"`` (exact), ``"hnsw"``
            (``hnsw_m`` links per node, 32 as in the paper) or ``"ivf"`` (``nlist`` lists, default ~4*sqrt(n);
            ``nprobe`` probed per query). ``ef_search`` and ``nprobe`` are attributes you may change
            between searches.
        copy: keep a private copy of ``embeddings`` (default). ``copy=False`` keeps a reference to a float32
            C-contiguous numpy array (saving its memory for large databases); it must not change afterwards.

    Every search returns a ``SearchResult``: ``scores, ids`` of shape ``(n_queries, top_k)``, best first,
    with ``.cost`` holding MFLOPs per query and wall-clock.
    """

    def __init__(self, embeddings, metric: str = "cosine", backend: str = "auto", index_type: str = "flat", *,
                 copy: bool = True, hnsw_m: int = 32, ef_construction: int = 40, ef_search: int = 64,
                 nlist: int | None = None, nprobe: int = 16):
        self.metric = check_metric(metric)
        self.index_type = index_type
        self.backend = _resolve_backend(backend, index_type)
        self._build_params = {
            "hnsw_m": as_int(hnsw_m, "hnsw_m", minimum=2),
            "ef_construction": as_int(ef_construction, "ef_construction", minimum=1),
            "nlist": None if nlist is None else as_int(nlist, "nlist", minimum=1),
        }
        self.ef_search, self.nprobe = ef_search, nprobe  # checked by their setters
        db = as_float32_matrix(embeddings, "embeddings")
        if copy and (isinstance(embeddings, torch.Tensor) or np.may_share_memory(db, embeddings)):
            db = db.copy()  # the index owns its data; later edits of the caller's array must not leak in
        self._db = db
        self._levels: dict = {}
        self._exact_levels: dict = {}  # exact structures kept for exact=True when index_type is approximate
        self._norms: dict = {}  # cosine: prefix norms per re-rank dim, so re-ranking skips normalising rows
        self._codes: dict = {}  # code key (SearchPlan.code_key) -> CodeLevel, for search_plan
        self.plan: SearchPlan | None = None  # the default of search_plan; set by tune, saved with the index

    # -- properties ---------------------------------------------------------------------------------
    @property
    def ef_search(self) -> int:
        """HNSW's search depth; settable (checked and stored as a Python int, which FAISS and JSON need)."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value) -> None:
        self._ef_search = as_int(value, "ef_search", minimum=1)

    @property
    def nprobe(self) -> int:
        """Inverted lists probed per query; settable (checked and stored as a Python int)."""
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value) -> None:
        self._nprobe = as_int(value, "nprobe", minimum=1)

    @property
    def dim(self) -> int:
        return self._db.shape[1]

    @property
    def ntotal(self) -> int:
        return self._db.shape[0]

    def __len__(self) -> int:
        return self.ntotal

    @property
    def embeddings(self) -> np.ndarray:
        """The stored database (read-only view)."""
        view = self._db.view()
        view.flags.writeable = False
        return view

    @property
    def built_dims(self) -> list[int]:
        return sorted(self._levels)

    def _all_levels(self):
        return [*self._levels.values(), *self._exact_levels.values()]

    def __repr__(self) -> str:
        return (f"MatryoshkaIndex(ntotal={self.ntotal}, dim={self.dim}, metric={self.metric!r}, "
                f"backend={self.backend!r}, index_type={self.index_type!r}, built_dims={self.built_dims})")

    def memory_bytes(self) -> dict[str, int]:
        """RAM held by the stored embeddings and by each built search structure (``"<type>@<dim>"``)."""
        out = {"embeddings": int(self._db.nbytes)}
        for level in sorted(self._all_levels(), key=lambda lv: (lv.dim, lv.index_type)):
            out[f"{level.index_type}@{level.dim}"] = int(level.nbytes)
        for key, level in _sorted_codes(self._codes):
            m = None if key[4] in (None, self._build_params["hnsw_m"]) else key[4]
            out[f"{structure_label(key[2], key[3], m, key[5])}-{key[1]}@{key[0]}"] = level.nbytes
        if self._norms:
            out["rerank_norms"] = sum(int(v.nbytes) for v in self._norms.values())
        out["total"] = sum(out.values())
        return out

    def plan_memory(self, plan) -> dict[str, float]:
        """Bytes per vector a plan keeps in RAM: its codes and structure, plus the cosine re-rank norms.

        ``"full_vectors_on_disk"`` is the float32 database a re-rank reads from; it is RAM too unless the index
        was loaded with ``mmap=True`` (then only the pages of the candidates are read, through the page cache).
        Builds the plan's codes if needed.
        """
        plan = check_plan(plan, self.dim, self.metric, 1)
        if self.ntotal == 0:
            raise ValueError("The index is empty (0 vectors); add embeddings before measuring a plan's memory.")
        codes = self._code_level(plan).nbytes / self.ntotal
        norms = 4.0 if self.metric == "cosine" else 0.0
        return {"codes": codes, "rerank_norms": norms, "ram": codes + norms, "full_vectors_on_disk": 4.0 * self.dim}

    # -- building -----------------------------------------------------------------------------------
    def add(self, embeddings) -> "MatryoshkaIndex":
        """Append ``(n, dim)`` embeddings; their ids continue from ``ntotal``. Built structures are updated; int8 and
        int4 plan codes are built again on their next use, calibrated on every row (their levels come from the rows
        they were built on, and new rows outside those ranges would be clipped)."""
        x = as_float32_matrix(embeddings, "embeddings")
        if x.shape[1] != self.dim:
            raise ValueError(f"embeddings have {x.shape[1]} dims but the index holds {self.dim}-dim vectors; "
                             "add embeddings from the same model at full size.")
        if x.shape[0] == 0:
            return self
        self._db = np.concatenate([self._db, x])
        for level in self._all_levels():
            self._fill(level, x, level.dim)
        for d in self._norms:
            self._norms[d] = np.concatenate([self._norms[d], prefix_norms(x, d)])
        for key, level in list(self._codes.items()):
            if level.precision in ("int8", "int4"):
                del self._codes[key]  # recalibrated on next use: stale ranges lost up to half the recall@10
            else:
                level.add(x)
        return self

    def build(self, dims=None) -> "MatryoshkaIndex":
        """Build the search structures for ``dims`` now (default: the full dim) instead of on first search."""
        dims = [self.dim] if dims is None else ([dims] if isinstance(dims, (int, np.integer)) else list(dims))
        for d in dims:
            self._level(self._check_dim(d, "dims entry"))
        return self

    def _new_level(self, dim: int, index_type: str):
        if self.backend == "torch":
            return TorchFlatLevel(dim, self.metric)
        return FaissLevel(dim, self.metric, index_type, self._build_params)

    def _fill(self, level, x: np.ndarray, dim: int) -> None:
        for s in range(0, x.shape[0], _ADD_CHUNK_ROWS):
            level.add(prefix(x[s:s + _ADD_CHUNK_ROWS], dim, self.metric))

    def _build_level(self, dim: int, index_type: str):
        level = self._new_level(dim, index_type)
        if index_type == "ivf" and self.backend == "faiss":
            if self.ntotal == 0:
                raise ValueError("An IVF index is trained on the database, which is empty; add embeddings first.")
            nlist = self._build_params["nlist"] or auto_nlist(self.ntotal)
            n_train = min(self.ntotal, _IVF_TRAIN_PER_LIST * nlist)
            rows = np.sort(np.random.default_rng(0).choice(self.ntotal, n_train, replace=False))
            level.train(prefix(self._db[rows], dim, self.metric), nlist)
        self._fill(level, self._db, dim)
        return level

    def _level(self, dim: int):
        if dim not in self._levels:
            self._levels[dim] = self._build_level(dim, self.index_type)
        return self._levels[dim]

    def _exact_level(self, dim: int):
        if self.index_type == "flat":
            return self._level(dim)
        if dim not in self._exact_levels:
            self._exact_levels[dim] = self._build_level(dim, "flat")
        return self._exact_levels[dim]

    # -- searching ----------------------------------------------------------------------------------
    def search(self, queries, top_k: int, dim: int | None = None, exact: bool = False) -> SearchResult:
        """Single-shot search of the whole database at ``dim`` (default: full).

        ``exact=True`` scans every vector even when ``index_type`` is an approximate one (the exact
        structure this needs is built once and kept; ``memory_bytes`` reports it). The same flag on
        ``adaptive_search``/``funnel_search`` makes their first stage exact.
        """
        return self._run(queries, [(self._check_dim(dim, "dim"), top_k)], top_k, exact)

    def adaptive_search(self, queries, top_k: int, shortlist_dim: int, rerank_dim: int | None = None,
                        shortlist_k: int = 200, exact: bool = False) -> SearchResult:
        """Adaptive retrieval: shortlist ``shortlist_k`` at ``shortlist_dim`` (D_s), re-rank at ``rerank_dim`` (D_r).

        ``rerank_dim`` defaults to the full dim. A shortlist longer than the database is cut to the database.
        """
        top_k = as_int(top_k, "top_k", minimum=1)
        shortlist_dim = self._check_dim(shortlist_dim, "shortlist_dim")
        rerank_dim = self._check_dim(rerank_dim, "rerank_dim")
        shortlist_k = as_int(shortlist_k, "shortlist_k", minimum=1)
        if shortlist_k < top_k:
            raise ValueError(f"shortlist_k={shortlist_k} is smaller than top_k={top_k}; the shortlist must hold at "
                             f"least top_k candidates: raise shortlist_k or lower top_k.")
        if rerank_dim < shortlist_dim:
            raise ValueError(f"rerank_dim={rerank_dim} is smaller than shortlist_dim={shortlist_dim}; re-ranking "
                             "uses more dims than shortlisting (did you swap them?).")
        return self._run(queries, [(shortlist_dim, shortlist_k), (rerank_dim, top_k)], top_k, exact)

    def funnel_search(self, queries, top_k: int, steps=None, exact: bool = False) -> SearchResult:
        """Funnel retrieval: ``steps`` is a sequence of ``(dim, keep)``.

        The first step searches the database at its dim and keeps ``keep`` candidates; each later step
        re-ranks the survivors at its dim and keeps ``keep``. Dims must not decrease, ``keep`` must not
        grow and must stay >= ``top_k``. ``dim=None`` means full. Default: ``default_funnel_steps``.
        """
        top_k = as_int(top_k, "top_k", minimum=1)
        steps = default_funnel_steps(self.dim, top_k) if steps is None else self._check_steps(steps, top_k)
        return self._run(queries, steps, top_k, exact)

    def _rerank_norms(self, dim: int):
        if self.metric != "cosine":
            return None
        if dim not in self._norms:
            self._norms[dim] = prefix_norms(self._db, dim)
        return self._norms[dim]

    def _check_dim(self, dim, name: str) -> int:
        return self.dim if dim is None else validate_dim(dim, self.dim, name=name)

    def _check_steps(self, steps, top_k: int) -> list[tuple[int, int]]:
        try:
            pairs = [tuple(step) for step in steps]
        except TypeError:
            raise TypeError(f"steps must be a sequence of (dim, keep) pairs, e.g. [(16, 200), (64, 50), "
                            f"({self.dim}, 10)], got {steps!r}.") from None
        if not pairs or any(len(p) != 2 for p in pairs):
            raise ValueError(f"steps must be a non-empty sequence of (dim, keep) pairs, got {steps!r}.")
        out = []
        for i, (d, k) in enumerate(pairs):
            d = self._check_dim(d, f"steps[{i}] dim")
            k = as_int(k, f"steps[{i}] keep", minimum=1)
            if k < top_k:
                raise ValueError(f"steps[{i}] keeps {k} candidates, fewer than top_k={top_k}; every shortlist must "
                                 "hold at least top_k candidates.")
            if out and d < out[-1][0]:
                raise ValueError(f"steps[{i}] dim={d} is smaller than the previous step's {out[-1][0]}; "
                                 "funnel dims must not decrease.")
            if out and k > out[-1][1]:
                raise ValueError(f"steps[{i}] keeps {k} candidates but the previous step passes on only "
                                 f"{out[-1][1]}; shortlists must not grow along the funnel.")
            out.append((d, k))
        return out

    def _check_queries(self, queries, needed_dim: int) -> np.ndarray:
        q = as_float32_matrix(queries, "queries", allow_1d=True)
        if q.shape[1] > self.dim:
            raise ValueError(f"queries have {q.shape[1]} dims but the database holds {self.dim}-dim vectors; embed "
                             f"queries with the same model as the database (or slice them to {self.dim} dims).")
        if q.shape[1] < needed_dim:
            fix = (f"pass full-size ({self.dim}-dim) queries: plans re-rank at the full size" if needed_dim == self.dim
                   else f"pass longer queries or search at dims <= {q.shape[1]}")
            raise ValueError(f"queries have {q.shape[1]} dims but this search scores at dim {needed_dim}; {fix}.")
        return q

    def _run(self, queries, steps: list[tuple[int, int]], top_k, exact: bool) -> SearchResult:
        top_k = as_int(top_k, "top_k", minimum=1)
        if self.ntotal == 0:
            raise ValueError("The index is empty (0 vectors); add embeddings with index.add(...) before searching.")
        if top_k > self.ntotal:
            raise ValueError(f"top_k={top_k} is larger than the {self.ntotal} vectors in the index; lower top_k.")
        q = self._check_queries(queries, max(d for d, _ in steps))
        n = self.ntotal
        first_dim, first_k = steps[0]
        build_start = time.perf_counter()
        level = self._exact_level(first_dim) if exact else self._level(first_dim)
        norms = {d: self._rerank_norms(d) for d, _ in steps[1:]}
        start = time.perf_counter()  # a structure built on first use is timed apart from the search
        if q.shape[0] == 0:
            empty = SearchCost((), n, 0, 0.0, start - build_start)
            return SearchResult(np.empty((0, top_k), np.float32), np.empty((0, top_k), np.int64), empty)
        scores, ids, scored = level.search(prefix(q, first_dim, self.metric), min(first_k, n),
                                           nprobe=self.nprobe, ef_search=self.ef_search)
        stages = [StageCost("search", first_dim, scored, level.index_type)]
        for d, k in steps[1:]:
            scores, ids, scored = rerank(self._db, q, ids, d, self.metric, min(k, n), norms[d])
            stages.append(StageCost("rerank", d, scored))
        cost = SearchCost(tuple(stages), n, q.shape[0], time.perf_counter() - start, start - build_start)
        return SearchResult(np.ascontiguousarray(scores[:, :top_k]), np.ascontiguousarray(ids[:, :top_k]), cost)

    # -- search plans (codes in RAM, float32 re-rank) -------------------------------------------------
    def code_key(self, plan: SearchPlan) -> tuple[int, str, str, int | None, int | None, bool]:
        """The key of ``plan``'s codes in this index (its ``hnsw_m`` resolved against the index's)."""
        return plan.code_key(self._build_params["hnsw_m"])

    def _code_level(self, plan: SearchPlan) -> CodeLevel:
        key = self.code_key(plan)
        if key not in self._codes:
            if self.ntotal == 0:
                raise ValueError("The index is empty (0 vectors); add embeddings before building a plan's codes.")
            self._codes[key] = CodeLevel(plan.dim, plan.precision, plan.structure, self.metric,
                                         hnsw_m=key[4] or self._build_params["hnsw_m"],
                                         ef_construction=self._build_params["ef_construction"],
                                         nlist=self._build_params["nlist"],
                                         cluster_dim=plan.cluster_dim, spill=plan.spill).build(self._db)
        return self._codes[key]

    def search_plan(self, queries, top_k: int, plan=None) -> SearchResult:
        """Search with a ``SearchPlan`` (default: ``self.plan``, which ``tune`` sets): shortlist ``plan.candidates``
        on the plan's prefix codes, then re-rank them at the full dim with the stored float32 vectors.

        Queries must be full size. The codes are built on first use (timed apart, as ``build_seconds``). Both stages
        use FAISS's thread count (``faiss.omp_set_num_threads``).
        """
        top_k = as_int(top_k, "top_k", minimum=1)
        if plan is None:
            plan = self.plan
        if plan is None:
            raise ValueError("No plan: pass plan=SearchPlan(dim=..., precision=..., candidates=...) or run "
                             "index.tune(queries) first, which sets index.plan.")
        plan = check_plan(plan, self.dim, self.metric, top_k)
        if self.ntotal == 0:
            raise ValueError("The index is empty (0 vectors); add embeddings with index.add(...) before searching.")
        if top_k > self.ntotal:
            raise ValueError(f"top_k={top_k} is larger than the {self.ntotal} vectors in the index; lower top_k.")
        q = self._check_queries(queries, self.dim)
        build_start = time.perf_counter()
        level = self._code_level(plan)
        norms = self._rerank_norms(self.dim)
        start = time.perf_counter()
        if q.shape[0] == 0:
            empty = SearchCost((), self.ntotal, 0, 0.0, start - build_start)
            return SearchResult(np.empty((0, top_k), np.float32), np.empty((0, top_k), np.int64), empty)
        ids, scored = level.search(q, plan.candidates, plan.ef_search or self.ef_search, plan.nprobe or self.nprobe)
        scores, ids, rescored = rerank(self._db, q, ids, self.dim, self.metric, top_k, norms,
                                       threads=level.faiss.omp_get_max_threads())
        stages = (StageCost("search", plan.dim, scored, f"{plan.structure_label}-{plan.precision}"),
                  StageCost("rerank", self.dim, rescored))
        cost = SearchCost(stages, self.ntotal, q.shape[0], time.perf_counter() - start, start - build_start)
        return SearchResult(np.ascontiguousarray(scores), np.ascontiguousarray(ids), cost)

    def tune(self, queries, target_recall: float = 0.99, objective: str = "ram", top_k: int = 10, **options):
        """Measure candidate plans on held-out ``queries`` and keep the cheapest that reaches ``target_recall``.

        See ``mrl_hf.retrieval.tuner.tune`` for ``options`` (the grid of dims, precisions, structures and
        candidates, and ``budget_s``). Sets ``self.plan`` (saved by ``save``) and returns the ``TuneResult``, whose
        ``str`` is the table of every plan tried. Raises ``NoPlanMeetsTarget`` naming the closest plan.
        """
        from .tuner import tune

        result = tune(self, queries, target_recall=target_recall, objective=objective, top_k=top_k, **options)
        self.plan = result.plan
        return result

    # -- persistence --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the index into folder ``path``, its files committed as one set (``mrl_hf.saving.owned_files``): a
        failed or killed save leaves a previous index there intact, and other files in the folder (a model, notes)
        are never touched.

        Stores the embeddings (``embeddings.npy``), the settings (``mrl_index.json``) and every built
        HNSW/IVF structure (``level_<dim>.faiss``); flat structures are rebuilt on demand after loading. Plan
        codes built so far are saved too
        (``codes_<dim>_<precision>_<structure>[_c<cluster_dim>][_m<hnsw_m>][_spill].faiss``), and so is ``self.plan``.
        So are the cosine re-rank norms computed so far (``norms_<dim>.npy``): a memory-mapped load then reads only
        the candidates' rows, never every vector.
        """
        def write(tmp: Path) -> None:
            np.save(tmp / _EMBEDDINGS_FILE, self._db)
            saved = []
            for d in self.built_dims:
                if self._levels[d].persistent:
                    self._levels[d].save(str(tmp / f"level_{d}.faiss"))
                    saved.append(d)
            codes = []
            for key, level in _sorted_codes(self._codes):
                level.save(str(tmp / _code_file(key, self._build_params["hnsw_m"])))
                codes.append(list(key))
            for d, norms in self._norms.items():
                np.save(tmp / f"norms_{d}.npy", norms)
            config = {"format": _FORMAT, "format_version": _FORMAT_VERSION, "metric": self.metric,
                      "backend": self.backend, "index_type": self.index_type, "dim": self.dim,
                      "ntotal": self.ntotal, "ef_search": self.ef_search, "nprobe": self.nprobe,
                      **self._build_params, "saved_levels": saved, "saved_codes": codes,
                      "saved_norms": sorted(self._norms),
                      "plan": None if self.plan is None else self.plan.to_dict()}
            (tmp / _CONFIG_FILE).write_text(json.dumps(config, indent=2))

        with owned_files(path, "index") as staging:
            write(staging)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = False, backend: str | None = None) -> "MatryoshkaIndex":
        """Load an index written by ``save``. ``mmap=True`` maps the embeddings from disk instead of reading them.

        ``backend`` overrides the saved one, e.g. ``"torch"`` to search a saved flat FAISS index without faiss.
        A damaged folder gives a ``ValueError`` naming the file (never a bare parser error).
        """
        path = Path(path)
        config_file = path / _CONFIG_FILE
        if not config_file.is_file():
            raise FileNotFoundError(f"{str(path)!r} holds no saved MatryoshkaIndex ({_CONFIG_FILE} is missing); "
                                    "pass the directory given to index.save(...).")
        with reading(path):
            config = _read_config(config_file)
            index = cls(np.empty((0, config["dim"]), np.float32), metric=config["metric"],
                        backend=config["backend"] if backend is None else backend,
                        index_type=config["index_type"], hnsw_m=config["hnsw_m"],
                        ef_construction=config["ef_construction"], ef_search=config["ef_search"],
                        nlist=config["nlist"], nprobe=config["nprobe"])
            embeddings = path / _EMBEDDINGS_FILE
            try:
                db = np.load(embeddings, mmap_mode="r" if mmap else None)
            except (OSError, ValueError, EOFError) as exc:
                raise ValueError(f"{str(embeddings)!r} cannot be read ({exc}); the saved index is damaged. Re-save "
                                 "the index (mrl_hf saves are atomic, so a killed save does not cause this).") from exc
            if db.shape != (config["ntotal"], config["dim"]) or db.dtype != np.float32:
                raise ValueError(f"{str(embeddings)!r} holds {db.dtype} {db.shape}, but the config says "
                                 f"float32 ({config['ntotal']}, {config['dim']}); the saved index is damaged.")
            index._db = db
            for d in config["saved_levels"]:
                level_file = path / f"level_{d}.faiss"
                try:
                    index._levels[d] = FaissLevel.load(str(level_file), d, index.metric, index.index_type,
                                                       index._build_params)
                except (OSError, RuntimeError) as exc:
                    raise ValueError(f"{str(level_file)!r} cannot be read ({exc}); the saved index is damaged. "
                                     "Re-save the index.") from exc
            for saved in config.get("saved_codes", []):  # absent in indexes saved before plans
                key = _saved_code_key(saved, config["hnsw_m"])
                code_file = path / _code_file(key, config["hnsw_m"])
                try:
                    index._codes[key] = CodeLevel.load(str(code_file), *key[:3], index.metric, cluster_dim=key[3],
                                                        spill=key[5])
                except (OSError, RuntimeError) as exc:
                    raise ValueError(f"{str(code_file)!r} cannot be read ({exc}); the saved index is damaged. "
                                     "Re-save the index.") from exc
            for d in config.get("saved_norms", []):  # absent in older saves: computed on first use
                norms_file = path / f"norms_{d}.npy"
                try:
                    norms = np.load(norms_file)
                except (OSError, ValueError, EOFError) as exc:
                    raise ValueError(f"{str(norms_file)!r} cannot be read ({exc}); the saved index is damaged. "
                                     "Re-save the index.") from exc
                if norms.shape != (config["ntotal"],):
                    raise ValueError(f"{str(norms_file)!r} holds {norms.shape[0] if norms.ndim else 0} norms for "
                                     f"{config['ntotal']} vectors; the saved index is damaged. Re-save the index.")
                index._norms[d] = norms
            if config.get("plan") is not None:
                index.plan = SearchPlan.from_dict(config["plan"])
        return index
