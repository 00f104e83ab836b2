"""Target 1 of the retrieval issue, timed in pairs: pq4 IVF plans against FAISS HNSW32 on the same queries.

``bench_quantized.py`` times the baseline first and the plans minutes later, and on this shared 2-core machine the
same search moves by 20-40% between runs (its baseline alone measured 0.101-0.136 ms/query for HNSW32 efSearch 32).
Here each plan and the baseline are timed in alternating pairs (``_measure.time_paired``: 1,000 queries per call,
which runs first alternates), so drift in the machine's load falls on both; the QPS ratio is the median of the
per-pair ratios, with its quartiles.

Data: the 185,365 MRL fine-tuned MiniLM passages and 1,000 held-out queries of ``bench_quantized.py --data passages``
(read from its cache). Baseline: raw FAISS ``IndexHNSWFlat(384, 32)``, efConstruction 200, at the smallest efSearch
whose recall@10 reaches 0.99. Plans: ``MatryoshkaIndex(..., nlist=512)`` loaded with ``mmap=True`` (full vectors on
disk), ``SearchPlan(384, "pq4", "ivf", candidates, nprobe=...)``, with ``--spill`` each vector in two lists
(``spill=True``); RAM as ``plan_memory`` counts it.

    python benchmarks/bench_pq4_paired.py [--nprobe 80,96,112] [--candidates 50] [--repeats 15]   # ~4 min
    python benchmarks/bench_pq4_paired.py --spill --nprobe 24,32,40

Not run by CI.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _measure import time_paired  # noqa: E402
from bench_quantized import mrl_encoded, offline_passages  # noqa: E402

from mrl_hf.evaluation import top_k_overlap  # noqa: E402
from mrl_hf.retrieval import MatryoshkaIndex, SearchPlan  # noqa: E402
from mrl_hf.retrieval.tuner import markdown_table  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="outputs/bench_quantized_cache")
    ap.add_argument("--nlist", type=int, default=512)
    ap.add_argument("--nprobe", default="80,96,112")
    ap.add_argument("--candidates", default="50")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--spill", action="store_true", help="plans store each vector in two IVF lists (spill=True)")
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    db, queries = mrl_encoded(offline_passages, os.path.join(args.cache, "mrl_passages.npy"), args.queries)
    print(f"# {len(db):,} MRL MiniLM passages x {db.shape[1]}, {len(queries)} held-out queries, {args.threads} "
          f"threads, faiss {faiss.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory() as tmp:
        MatryoshkaIndex(db, metric="cosine", copy=False, nlist=args.nlist).save(tmp + "/ix")
        index = MatryoshkaIndex.load(tmp + "/ix", mmap=True)
        exact = index.search(queries, 10, exact=True).ids

        x = np.ascontiguousarray(db / np.linalg.norm(db, axis=1, keepdims=True))
        q = np.ascontiguousarray(queries / np.linalg.norm(queries, axis=1, keepdims=True))
        hnsw = faiss.IndexHNSWFlat(db.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 200
        hnsw.add(x)
        hnsw_ram = faiss.serialize_index(hnsw).nbytes / len(db)
        for ef in (16, 24, 32, 48, 64, 128):
            hnsw.hnsw.efSearch = ef
            base_recall = top_k_overlap(hnsw.search(q, 10)[1], exact, 10)
            if base_recall >= 0.99:
                break
        print(f"baseline HNSW32 float32, efConstruction 200, efSearch {ef}: recall {base_recall:.4f}, "
              f"{hnsw_ram:,.0f} B/vector; budget 1/8 = {hnsw_ram / 8:.0f} B/vector")

        def baseline():
            hnsw.search(q, 10)

        rows = []
        for nprobe in [int(p) for p in args.nprobe.split(",")]:
            for cand in [int(c) for c in args.candidates.split(",")]:
                plan = SearchPlan(db.shape[1], "pq4", "ivf", cand, nprobe=nprobe, spill=args.spill)
                result = index.search_plan(queries, 10, plan)  # builds the codes on first use
                recall = top_k_overlap(result.ids, exact, 10)
                ram = index.plan_memory(plan)["ram"]
                t = time_paired(baseline, lambda: index.search_plan(queries, 10, plan), repeats=args.repeats)
                rows.append([plan.describe(), f"{ram:.1f}", f"{hnsw_ram / ram:.1f}x", f"{1e3 * t['a'] / len(q):.3f}",
                             f"{1e3 * t['b'] / len(q):.3f}", f"{recall:.4f}", f"{1 / t['ratio']:.2f}x",
                             f"{1 / t['q3']:.2f}-{1 / t['q1']:.2f}x"])
                print(" | ".join(rows[-1]), flush=True)
    print("\n" + markdown_table(["plan", "RAM B/vector", "RAM saving", "HNSW32 ms/query", "plan ms/query",
                                 "plan recall@10", "QPS vs HNSW32 (median pair)", "quartiles"], rows))


if __name__ == "__main__":
    main()
