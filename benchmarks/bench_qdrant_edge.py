"""The same search plans in MatryoshkaIndex and in Qdrant Edge (Qdrant's engine in-process), on real vectors.

Data: the MRL fine-tuned MiniLM vectors of ``bench_quantized.py --data passages`` (cached there; encoding them takes
about 30 minutes on 2 cores), a random ``--n`` of the database and its first ``--queries`` held-out queries. For each
plan: ms/query and recall@10 (against exact float32 search at full size) of both, the top-10 overlap between them, and
the rows where they agree exactly. Our index runs from a saved folder loaded with ``mmap=True``; Qdrant Edge from its
shard folder (full vectors on disk, codes in RAM), one ``query_batch`` per 64 queries. Both are timed after a warm-up
pass, best of 3. The shard's size on disk is printed.

RAM (the engine reports none, so the process is measured): each side is opened from its folder in a fresh Python
process, which runs every plan once and prints its resident memory from ``/proc/self/status`` minus what it held after
the imports: ``RssAnon`` (memory the process allocated: codes, graphs, norms, the engine's own structures) and
``RssFile`` (pages of memory-mapped files that the searches touched: the full vectors read by the re-rank, and
whatever the engine maps). Linux only.

    python benchmarks/bench_qdrant_edge.py --n 50000 --queries 500
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import subprocess
import tempfile
import time
from importlib.metadata import version

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_quantized import mrl_encoded, offline_passages  # noqa: E402

from mrl_hf.evaluation import top_k_overlap  # noqa: E402
from mrl_hf.retrieval import MatryoshkaIndex, SearchPlan  # noqa: E402
from mrl_hf.retrieval.qdrant_edge import export_to_qdrant_edge, qdrant_edge_search  # noqa: E402
from mrl_hf.retrieval.tuner import markdown_table  # noqa: E402

PLANS = [SearchPlan(384, "binary", "flat", 200), SearchPlan(256, "binary", "flat", 400),
         SearchPlan(192, "binary", "hnsw", 100, ef_search=128), SearchPlan(128, "int8", "hnsw", 100, ef_search=128),
         SearchPlan(384, "int8", "hnsw", 50, ef_search=128)]


def best_of(fn, repeats=3):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, min(times)


def resident_kb() -> dict:
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) for k in ("RssAnon", "RssFile")}


def rss_child(kind: str, folder: str, queries_file: str) -> None:
    """Open ``folder`` (our index or an Edge shard), run every plan once, print the resident memory it added."""
    import faiss  # noqa: F401  (both libraries loaded before the first reading: their code is not the index's RAM)
    import qdrant_edge

    queries = np.load(queries_file)
    before = resident_kb()
    if kind == "ours":
        index = MatryoshkaIndex.load(folder, mmap=True)
        opened = resident_kb()
        for plan in PLANS:
            index.search_plan(queries, 10, plan)
    else:
        shard = qdrant_edge.EdgeShard.load(folder)
        opened = resident_kb()
        for plan in PLANS:
            qdrant_edge_search(shard, queries, plan, 10, metric="cosine")
    after = resident_kb()
    print(json.dumps({"open": {k: opened[k] - before[k] for k in before},
                      "searched": {k: after[k] - before[k] for k in before}}))


def measure_rss(kind: str, folder: str, queries_file: str) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--rss-child", kind, folder, queries_file],
                         check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def folder_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--cache", default="outputs/bench_quantized_cache")
    ap.add_argument("--rss-queries", type=int, default=100,
                    help="queries the RAM processes run (few: each query's re-rank touches its candidates' pages)")
    ap.add_argument("--rss-child", nargs=3, metavar=("KIND", "FOLDER", "QUERIES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(*args.rss_child)
    import faiss

    faiss.omp_set_num_threads(2)
    db, queries = mrl_encoded(offline_passages, os.path.join(args.cache, "mrl_passages.npy"), 1000)
    db = db[np.sort(np.random.default_rng(0).permutation(len(db))[:args.n])]
    queries = queries[:args.queries]
    print(f"# MRL fine-tuned MiniLM, {len(db):,} real texts x {db.shape[1]}, {len(queries)} held-out queries, top-10")
    print(f"# {platform.machine()}, {os.cpu_count()} cpus, faiss {faiss.__version__}, qdrant-edge-py "
          f"{version('qdrant-edge-py')}, {time.strftime('%Y-%m-%d')}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        MatryoshkaIndex(db, metric="cosine", copy=False).save(tmp + "/ix")
        index = MatryoshkaIndex.load(tmp + "/ix", mmap=True)
        exact = index.search(queries, 10, exact=True).ids
        start = time.perf_counter()
        shard = export_to_qdrant_edge(index, tmp + "/shard", PLANS)
        print(f"Qdrant Edge export (upsert + optimize, {len(PLANS)} plans): {time.perf_counter() - start:.0f} s, "
              f"shard on disk {folder_bytes(tmp + '/shard') / len(db):,.0f} B/vector")
        for plan in PLANS:
            ours, ours_s = best_of(lambda: index.search_plan(queries, 10, plan).ids)
            (_, edge), edge_s = best_of(lambda: qdrant_edge_search(shard, queries, plan, 10, metric=index.metric))
            rows.append([plan.describe(), f"{1e3 * ours_s / len(queries):.3f}", f"{top_k_overlap(ours, exact, 10):.4f}",
                         f"{1e3 * edge_s / len(queries):.3f}", f"{top_k_overlap(edge, exact, 10):.4f}",
                         f"{top_k_overlap(edge, ours, 10):.4f}", f"{(edge == ours).all(axis=1).mean():.3f}"])
        shard.close()
        index.save(tmp + "/ix_planned")  # with every plan's codes and norms: the fresh process loads, not builds
        planned = sum(index.plan_memory(plan)["codes"] for plan in PLANS) + index.plan_memory(PLANS[0])["rerank_norms"]
        np.save(tmp + "/queries.npy", queries[:args.rss_queries])
        rss = {kind: measure_rss(kind, folder, tmp + "/queries.npy")
               for kind, folder in (("ours", tmp + "/ix_planned"), ("Qdrant Edge", tmp + "/shard"))}
    print(markdown_table(["plan", "ours ms/query", "ours recall@10", "Edge ms/query", "Edge recall@10",
                          "top-10 overlap Edge vs ours", "rows identical"], rows))
    print(f"\nResident memory (B/vector) added by opening each folder in a fresh process (after the imports) and by "
          f"then running every plan on {min(args.rss_queries, len(queries))} queries; ours by plan_memory: "
          f"{planned:,.0f} B/vector of codes, graphs and norms:")
    per_vector = lambda kb: f"{1024 * kb / len(db):,.0f}"  # noqa: E731
    print(markdown_table(["engine", "RssAnon opened", "RssFile opened", "RssAnon searched", "RssFile searched"],
                         [[kind, per_vector(r["open"]["RssAnon"]), per_vector(r["open"]["RssFile"]),
                           per_vector(r["searched"]["RssAnon"]), per_vector(r["searched"]["RssFile"])]
                          for kind, r in rss.items()]))


if __name__ == "__main__":
    main()
