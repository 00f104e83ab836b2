"""Head + loss, one forward+backward, d=768, 30,522 classes, M={12,...,768}, on the CPU or a GPU.

(a) plain Linear(768, 30522) + cross-entropy; (b) the paper's MRL-E loop (Algorithms 1-2: a full
slice-and-matmul per m); (c) mrl_hf.MatryoshkaHead(efficient=True).loss (block prefix sums, fused CE).
Time: median of 5 runs, all cases in this process, run round-robin. Peak memory: on the CPU the growth of the
resident set during one forward+backward, each case in fresh child processes, median of 5 (see _measure.py); on
CUDA the allocator's peak. Targets for (c): <= 1.3x the time and <= 1.5x the memory of (a).

    python benchmarks/bench_heads.py                                   # CPU, 1,024 tokens, float32
    python benchmarks/bench_heads.py --device cuda --tokens 8192 --dtype bfloat16 --json out.json
"""
from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _measure import (device_arguments, machine, median_peak_in_children, peak_cuda_mib, peak_rss_growth_mib,  # noqa: E402
                      print_table, time_interleaved)

from mrl_hf import MatryoshkaHead, halving_nesting_list  # noqa: E402

DIM, CLASSES = 768, 30522
NESTING = halving_nesting_list(DIM)
CASES = {
    "(a) Linear + CE": "plain",
    "(b) paper loop, MRL-E": "paper",
    "(c) MatryoshkaHead MRL-E": "ours",
}


def make_step(case: str, tokens: int, device: str = "cpu", dtype: str = "float32"):
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    head = MatryoshkaHead(NESTING, CLASSES, efficient=True).to(device, dt)  # same weight shape for all three cases
    x = torch.randn(tokens, DIM, device=device, dtype=dt, requires_grad=True)
    y = torch.randint(0, CLASSES, (tokens,), device=device)

    def step():
        head.zero_grad(set_to_none=True)
        x.grad = None
        if case == "plain":  # logits upcast for the loss, as transformers' losses do
            loss = F.cross_entropy(F.linear(x, head.weight, head.bias).float(), y)
        elif case == "paper":
            loss = sum(F.cross_entropy((x[:, :m] @ head.weight[:, :m].T + head.bias).float(), y) for m in NESTING)
        else:
            loss = head(x, y).loss
        loss.backward()

    return step


def parse_args(argv=None):
    parser = device_arguments(__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.memory:
        step = make_step(args.memory, args.tokens, args.device, args.dtype)
        print(json.dumps({"mib": peak_rss_growth_mib(step)}))
        return
    torch.set_num_threads(os.cpu_count() or 1)
    seconds = time_interleaved({name: make_step(case, args.tokens, args.device, args.dtype)
                                for name, case in CASES.items()}, device=args.device)
    if args.device.startswith("cuda"):
        memory = {name: peak_cuda_mib(make_step(case, args.tokens, args.device, args.dtype))
                  for name, case in CASES.items()}
    else:
        memory = median_peak_in_children(__file__, {name: ["--memory", case, "--tokens", str(args.tokens), "--dtype",
                                                           args.dtype] for name, case in CASES.items()})
    base_t, base_m = seconds["(a) Linear + CE"], memory["(a) Linear + CE"]
    print(f"# {args.tokens} tokens x d={DIM} -> {CLASSES} classes, M={NESTING}, {args.dtype}; {machine(args.device)}")
    rows = [[name, seconds[name] * 1000, seconds[name] / base_t, memory[name], memory[name] / base_m]
            for name in CASES]
    print_table(["case", "fwd+bwd ms", "time vs (a)", "peak MiB", "memory vs (a)"], rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(args.device), "tokens": args.tokens, "dtype": args.dtype,
                       "rows": [dict(zip(["case", "ms", "time_ratio", "mib", "memory_ratio"], r)) for r in rows]}, f,
                      indent=1)


if __name__ == "__main__":
    main()
