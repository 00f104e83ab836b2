"""Head + loss, one forward+backward at 1,024 tokens, d=768, 30,522 classes, M={12,...,768} (CPU).

(a) plain Linear(768, 30522) + cross-entropy; (b) the paper's MRL-E loop (Algorithms 1-2: a full
slice-and-matmul per m); (c) mrl_hf.MatryoshkaHead(efficient=True).loss (block prefix sums, fused CE).
Time: median of 5 runs, all cases in this process, run round-robin. Peak memory: growth of the resident set during one
forward+backward, each case in a fresh child process (see _measure.py). Usage: python benchmarks/bench_heads.py
"""
from __future__ import annotations

import json
import os
import platform
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _measure import in_child, peak_rss_growth_mib, print_table, time_interleaved  # noqa: E402

from mrl_hf import MatryoshkaHead, halving_nesting_list  # noqa: E402

TOKENS, DIM, CLASSES = 1024, 768, 30522
NESTING = halving_nesting_list(DIM)
CASES = {
    "(a) Linear + CE": "plain",
    "(b) paper loop, MRL-E": "paper",
    "(c) MatryoshkaHead MRL-E": "ours",
}


def make_step(case: str):
    torch.manual_seed(0)
    head = MatryoshkaHead(NESTING, CLASSES, efficient=True)  # same weight shape for all three cases
    x = torch.randn(TOKENS, DIM, requires_grad=True)
    y = torch.randint(0, CLASSES, (TOKENS,))

    def step():
        head.zero_grad(set_to_none=True)
        x.grad = None
        if case == "plain":
            loss = F.cross_entropy(F.linear(x, head.weight, head.bias), y)
        elif case == "paper":
            loss = sum(F.cross_entropy(x[:, :m] @ head.weight[:, :m].T + head.bias, y) for m in NESTING)
        else:
            loss = head.loss(x, y).loss
        loss.backward()

    return step


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--memory":
        step = make_step(sys.argv[2])
        print(json.dumps({"mib": peak_rss_growth_mib(step)}))
        return
    torch.set_num_threads(os.cpu_count() or 1)
    seconds = time_interleaved({name: make_step(case) for name, case in CASES.items()})
    memory = {name: in_child(__file__, "--memory", case)["mib"] for name, case in CASES.items()}
    base_t, base_m = seconds["(a) Linear + CE"], memory["(a) Linear + CE"]
    print(f"# {TOKENS} tokens x d={DIM} -> {CLASSES} classes, M={NESTING}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    rows = [[name, seconds[name] * 1000, seconds[name] / base_t, memory[name], memory[name] / base_m]
            for name in CASES]
    print_table(["case", "fwd+bwd ms", "time vs (a)", "peak MiB", "memory vs (a)"], rows)


if __name__ == "__main__":
    main()
