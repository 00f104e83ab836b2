"""One MLM training step (forward + backward + AdamW step), bert-base size, seq 128, batch 8, 15% masked (CPU).

(a) transformers BertForMaskedLM: vocabulary logits at every position; (b) mrl_hf MRLBertForMaskedLM with
M={12,...,768} (MRL-E tied decoder, loss only at masked positions). Same config and inputs. Time: median of
5 steps, round-robin in this process. Peak memory: resident-set growth of one step, each case in a fresh
child process (see _measure.py). Target: (b)/(a) <= 1.10 for both. Usage: python benchmarks/bench_mlm.py
"""
from __future__ import annotations

import json
import os
import platform
import sys

import torch
from transformers import BertConfig, BertForMaskedLM

sys.path.insert(0, os.path.dirname(__file__))
from _measure import in_child, peak_rss_growth_mib, print_table, time_interleaved  # noqa: E402

from mrl_hf.modeling import MRLBertConfig, MRLBertForMaskedLM  # noqa: E402

BATCH, SEQ, MASK_RATE = 8, 128, 0.15
CASES = {"(a) BertForMaskedLM": "plain", "(b) MRLBertForMaskedLM": "mrl"}


def make_step(case: str):
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig()) if case == "plain" else MRLBertForMaskedLM(MRLBertConfig())
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(1000, 30000, (BATCH, SEQ))
    labels = ids.clone()
    labels[torch.rand(BATCH, SEQ) > MASK_RATE] = -100

    def step():
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()

    return step


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--memory":
        step = make_step(sys.argv[2])
        step()  # optimizer state exists before measuring, as in a training loop
        print(json.dumps({"mib": peak_rss_growth_mib(step)}))
        return
    torch.set_num_threads(os.cpu_count() or 1)
    seconds = time_interleaved({name: make_step(case) for name, case in CASES.items()})
    memory = {name: in_child(__file__, "--memory", case)["mib"] for name, case in CASES.items()}
    base = "(a) BertForMaskedLM"
    print(f"# bert-base, batch {BATCH} x seq {SEQ}, {MASK_RATE:.0%} masked; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    rows = [[n, seconds[n], seconds[n] / seconds[base], memory[n], memory[n] / memory[base]] for n in CASES]
    print_table(["case", "step s", "time vs (a)", "peak MiB", "memory vs (a)"], rows)


if __name__ == "__main__":
    main()
