"""What bounds "recall 0.99 within 1/8 of HNSW32's RAM at >= 1x its QPS": other shortlist structures, raw FAISS.

``bench_quantized.py`` measures the plans ``MatryoshkaIndex`` offers; this script asks whether a structure it does
not offer would have met the target on the same real vectors (the 185,365 MRL MiniLM passages and 1,000 held-out
queries of ``bench_quantized.py --data passages``, read from its cache). Each structure holds codes of the
normalised prefix; its shortlist is re-ranked exactly at full size by ``mrl_hf``'s own re-rank (threaded, the
cosine norms precomputed), so recall@10 and ms/query are comparable with ``bench_quantized``'s plans:

- ``hnsw8-int4@256`` (FAISS ``HNSW8,SQ4``: what ``SearchPlan(256, "int4", "hnsw", hnsw_m=8)`` builds), and the same
  codes searched through a graph built on the float32 full vectors (``-float-graph``: does a graph built with exact
  distances need a smaller efSearch?);
- ``hnsw8-pq128@384`` (``HNSW8,PQ128``): product-quantised codes of all 384 dims (128 bytes, 3 dims per
  sub-quantizer);
- ``nsg16-int4@256`` (``NSG16,SQ4``): a fixed-degree NSG graph (16 links, no per-level bookkeeping) over the same
  int4 codes;
- denser graphs over smaller codes, the budget spent on links instead: ``hnsw16-pq64@384`` (``HNSW16,PQ64``, 64-byte
  product-quantised codes of all 384 dims), ``hnsw18-pq48@384`` and ``hnsw20-pq32@384`` (48 and 32 bytes),
  ``hnsw16-int4@144`` and ``hnsw12-int4@192`` (int4 codes of shorter prefixes);
- inverted lists over 4-bit product-quantised codes scanned with SIMD fast-scan (``IVF<nlist>,PQ<m>x4fs``: what
  ``SearchPlan(dim, "pq4", "ivf")`` builds when ``m = dim / 2``), e.g. ``ivf512-pq192fs@384``, ``ivf1024-pq96fs@384``
  and a flat ``pq192fs@384``; here the efSearch grid is the number of lists probed (``nprobe``);
- ``ivf512-flat@384`` (``IVF512,Flat``): the same lists holding the float32 vectors, so its recall is what probing
  alone loses, with no code error.

RAM counts the structure's serialised size plus the 4-byte cosine norm per vector, as ``plan_memory`` does.

    python benchmarks/bench_graph_codes.py --queries 1000       # ~30 min on 2 idle cores (each PQ graph: ~2-5 min)
    python benchmarks/bench_graph_codes.py --structures ivf256-pq192fs@384,ivf512-pq192fs@384,ivf1024-pq192fs@384 \
        --ef-search 32,48,64,96,128 --candidates 30,50,100      # IVF fast-scan: a few minutes

Not run by CI.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_quantized import hnsw_baseline, mrl_encoded, offline_passages  # noqa: E402

from mrl_hf.evaluation import top_k_overlap  # noqa: E402
from mrl_hf.retrieval import MatryoshkaIndex  # noqa: E402
from mrl_hf.retrieval._inputs import prefix  # noqa: E402
from mrl_hf.retrieval._rerank import prefix_norms, rerank  # noqa: E402
from mrl_hf.retrieval.tuner import markdown_table  # noqa: E402

STRUCTURES = {  # name: (prefix dim, FAISS factory string, graph built on the float32 full vectors)
    "hnsw8-int4@256": (256, "HNSW8,SQ4", False),
    "hnsw8-int4@256-float-graph": (256, "HNSW8,SQ4", True),
    "hnsw8-pq128@384": (384, "HNSW8,PQ128", False),
    "nsg16-int4@256": (256, "NSG16,SQ4", False),
    "hnsw16-pq64@384": (384, "HNSW16,PQ64", False),
    "hnsw16-int4@144": (144, "HNSW16,SQ4", False),
    "hnsw12-int4@192": (192, "HNSW12,SQ4", False),
    "hnsw18-pq48@384": (384, "HNSW18,PQ48", False),
    "hnsw20-pq32@384": (384, "HNSW20,PQ32", False),
    "ivf1024-pq96fs@384": (384, "IVF1024,PQ96x4fs", False),
    "ivf1024-pq192fs@384": (384, "IVF1024,PQ192x4fs", False),
    "ivf2048-pq192fs@384": (384, "IVF2048,PQ192x4fs", False),
    "ivf512-pq192fs@384": (384, "IVF512,PQ192x4fs", False),
    "ivf256-pq192fs@384": (384, "IVF256,PQ192x4fs", False),
    "ivf512-pq128fs@384": (384, "IVF512,PQ128x4fs", False),
    "ivf512-pq128fs@256": (256, "IVF512,PQ128x4fs", False),
    "ivf512-pq96fs@192": (192, "IVF512,PQ96x4fs", False),
    "ivf1024-pq128fs@384": (384, "IVF1024,PQ128x4fs", False),
    "ivf1024-pq128fs@256": (256, "IVF1024,PQ128x4fs", False),
    "pq192fs@384": (384, "PQ192x4fs", False),
    "ivf512-flat@384": (384, "IVF512,Flat", False),  # exact scores in the probed lists: what probing alone loses
}


def build(faiss, db: np.ndarray, dim: int, spec: str, float_graph: bool):
    codes = np.ascontiguousarray(prefix(db, dim, "cosine"))
    index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    if spec.startswith("HNSW"):
        faiss.downcast_index(index).hnsw.efConstruction = 200
    index.train(codes[np.sort(np.random.default_rng(0).choice(len(codes), 65536, replace=False))])
    if not float_graph:
        index.add(codes)
        return index
    links = int(spec.split(",")[0][len("HNSW"):])
    graph = faiss.IndexHNSWFlat(db.shape[1], links, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = 200
    graph.add(np.ascontiguousarray(prefix(db, db.shape[1], "cosine")))
    hnsw = faiss.downcast_index(index)
    hnsw.hnsw = graph.hnsw  # the float graph's links, over the int4 codes
    hnsw.storage.add(codes)
    hnsw.ntotal = hnsw.storage.ntotal
    return index


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="outputs/bench_quantized_cache")
    ap.add_argument("--structures", default=",".join(STRUCTURES), help="comma-separated names of STRUCTURES")
    ap.add_argument("--ef-search", default="32,48,64,100,128,160,200,256", help="efSearch (NSG: search_L) grid")
    ap.add_argument("--candidates", default="50,100", help="shortlist sizes re-ranked at full size")
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    db, queries = mrl_encoded(offline_passages, os.path.join(args.cache, "mrl_passages.npy"), args.queries)
    exact_ids = MatryoshkaIndex(db, metric="cosine", copy=False).search(queries, 10, exact=True).ids
    norms = prefix_norms(db, db.shape[1])
    base = [r for r in hnsw_baseline(db, queries, exact_ids, 200) if r["ef"] in (16, 32, 64)]
    print(f"# {len(db):,} MRL MiniLM passages x {db.shape[1]}, {len(queries)} queries, {args.threads} threads, "
          f"faiss {faiss.__version__}, {time.strftime('%Y-%m-%d')}")
    print(markdown_table(["baseline HNSW32 float32 efSearch", "RAM B/vector", "ms/query", "recall@10"],
                         [[str(r["ef"]), f"{r['ram']:,.0f}", f"{r['ms']:.3f}", f"{r['recall']:.4f}"] for r in base]))
    ref = next(r for r in base if r["ef"] == 32)
    rows = []
    for name in args.structures.split(","):
        dim, spec, float_graph = STRUCTURES[name]
        start = time.perf_counter()
        index = build(faiss, db, dim, spec, float_graph)
        built = time.perf_counter() - start
        ram = faiss.serialize_index(index).nbytes / len(db) + 4
        q = np.ascontiguousarray(prefix(queries, dim, "cosine"))
        inner = faiss.downcast_index(index)
        efs = [int(e) for e in args.ef_search.split(",")] if spec.startswith(("HNSW", "NSG", "IVF")) else [0]
        for ef in efs:
            if "NSG" in spec:
                inner.nsg.search_L = ef
            elif spec.startswith("HNSW"):
                inner.hnsw.efSearch = ef
            elif spec.startswith("IVF"):
                faiss.extract_index_ivf(index).nprobe = ef
            for cand in [int(c) for c in args.candidates.split(",")]:
                index.search(q[:100], cand)  # warm-up
                best = np.inf
                for _ in range(3):
                    t = time.perf_counter()  # prefixing the queries is timed, as search_plan does
                    _, shortlist = index.search(np.ascontiguousarray(prefix(queries, dim, "cosine")), cand)
                    _, ids, _ = rerank(db, queries, shortlist, db.shape[1], "cosine", 10, norms, threads=args.threads)
                    best = min(best, time.perf_counter() - t)
                ms = 1e3 * best / len(queries)
                rows.append([name, f"{built:.0f}", str(ef), str(cand), f"{ram:.1f}", f"{ms:.3f}",
                             f"{top_k_overlap(ids, exact_ids, 10):.4f}", f"{ref['ms'] / ms:.2f}x"])
                print(" | ".join(rows[-1]), flush=True)
    print("\n" + markdown_table(["structure", "build s", "efSearch / search_L", "candidates", "RAM B/vector",
                                 "ms/query", "recall@10", "QPS vs HNSW32 ef 32"], rows))
    fits = [r for r in rows if float(r[4]) <= ref["ram"] / 8 and float(r[6]) >= 0.99]
    if fits:
        best = min(fits, key=lambda r: float(r[5]))
        print(f"\nfastest at recall >= 0.99 within 1/8 of the RAM ({ref['ram'] / 8:.0f} B/vector): {best[0]} "
              f"ef {best[2]} -> {best[3]}: {best[5]} ms/query, {best[7]} QPS, recall {best[6]}")
    else:
        print(f"\nno structure here reaches recall 0.99 within {ref['ram'] / 8:.0f} B/vector")


if __name__ == "__main__":
    main()
