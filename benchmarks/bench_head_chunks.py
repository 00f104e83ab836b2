"""The fused MRL-E head + loss on a GPU at several working-buffer sizes (how many rows each chunk of the fused loop
holds), against plain Linear + cross-entropy: the measurement behind the accelerator's buffer size in
``mrl_hf.losses._CHUNK_BYTES``. Same step as benchmarks/bench_heads.py (d=768, 30,522 classes, M={12,...,768}).

    python benchmarks/bench_head_chunks.py --tokens 8192 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _measure import machine, peak_cuda_mib, print_table, time_interleaved  # noqa: E402
from bench_heads import make_step  # noqa: E402

import mrl_hf.losses as losses  # noqa: E402

BUFFERS_MIB = (128, 512, 1024, 2048)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--json", help="also write the table as JSON here")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (on the CPU the buffer is cache-sized: benchmarks/bench_heads.py).")
    default = losses._CHUNK_BYTES["accelerator"]
    rows = []
    for dtype in ("float32", "bfloat16"):
        plain = make_step("plain", args.tokens, "cuda", dtype)
        base_m = peak_cuda_mib(make_step("plain", args.tokens, "cuda", dtype))  # fresh steps on both sides: a step
        # that has run already holds its gradients, which its next peak would leave out
        for mib in BUFFERS_MIB:
            losses._CHUNK_BYTES["accelerator"] = mib * 2**20
            ours = make_step("ours", args.tokens, "cuda", dtype)
            t = time_interleaved({"plain": plain, "ours": ours}, device="cuda")
            m = peak_cuda_mib(make_step("ours", args.tokens, "cuda", dtype))
            rows.append([dtype, mib, t["plain"] * 1000, t["ours"] * 1000, t["ours"] / t["plain"], m / base_m])
        losses._CHUNK_BYTES["accelerator"] = default
    print(f"# {args.tokens} tokens, Linear(768, 30522) + CE vs MatryoshkaHead MRL-E; {machine('cuda')}")
    header = ["dtype", "buffer MiB", "Linear+CE ms", "MRL-E ms", "time vs Linear+CE", "memory vs Linear+CE"]
    print_table(header, rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine("cuda"), "tokens": args.tokens, "rows": [dict(zip(header, r)) for r in rows]},
                      f, indent=1)


if __name__ == "__main__":
    main()
