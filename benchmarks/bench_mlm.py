"""One MLM training step (forward + backward + AdamW step), bert-base size, 15% masked, on the CPU or a GPU.

(a) transformers BertForMaskedLM: vocabulary logits at every position; (b) mrl_hf MRLBertForMaskedLM with
M={12,...,768} (MRL-E tied decoder, loss only at masked positions). Same config and inputs. Time: median of
5 steps, round-robin in this process. Peak memory: on the CPU the resident-set growth of one step, each case in
fresh child processes, median of 5 (see _measure.py); on CUDA the allocator's peak. ``--bf16`` runs the step
under bfloat16 autocast, as ``TrainingArguments(bf16=True)`` does. Targets: (b)/(a) <= 1.10 on the CPU, <= 1.05
time on a GPU.

    python benchmarks/bench_mlm.py                                          # CPU, batch 8 x seq 128
    python benchmarks/bench_mlm.py --device cuda --batch 32 --bf16 --json out.json
"""
from __future__ import annotations

import contextlib
import json
import os
import sys

import torch
from transformers import BertConfig, BertForMaskedLM

sys.path.insert(0, os.path.dirname(__file__))
from _measure import (device_arguments, machine, median_peak_in_children, peak_cuda_mib, peak_rss_growth_mib,  # noqa: E402
                      print_table, time_interleaved)

from mrl_hf.modeling import MRLBertConfig, MRLBertForMaskedLM  # noqa: E402

MASK_RATE = 0.15
CASES = {"(a) BertForMaskedLM": "plain", "(b) MRLBertForMaskedLM": "mrl"}


def make_step(case: str, batch: int, seq: int, device: str = "cpu", bf16: bool = False):
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig()) if case == "plain" else MRLBertForMaskedLM(MRLBertConfig())
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(1000, 30000, (batch, seq), device=device)
    labels = ids.clone()
    labels[torch.rand(batch, seq, device=device) > MASK_RATE] = -100
    autocast = (torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()

    return step


def parse_args(argv=None):
    parser = device_arguments(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.memory:
        step = make_step(args.memory, args.batch, args.seq, args.device, args.bf16)
        step()  # optimizer state exists before measuring, as in a training loop
        print(json.dumps({"mib": peak_rss_growth_mib(step)}))
        return
    torch.set_num_threads(os.cpu_count() or 1)
    steps = {name: make_step(case, args.batch, args.seq, args.device, args.bf16) for name, case in CASES.items()}
    seconds = time_interleaved(steps, device=args.device)
    if args.device.startswith("cuda"):
        memory = {name: peak_cuda_mib(step) for name, step in steps.items()}  # optimizer state already exists
    else:
        extra = ["--batch", str(args.batch), "--seq", str(args.seq)] + (["--bf16"] if args.bf16 else [])
        memory = median_peak_in_children(__file__, {name: ["--memory", case, *extra] for name, case in CASES.items()})
    base = "(a) BertForMaskedLM"
    print(f"# bert-base, batch {args.batch} x seq {args.seq}, {MASK_RATE:.0%} masked, "
          f"{'bf16 autocast' if args.bf16 else 'float32'}; {machine(args.device)}")
    rows = [[n, seconds[n], seconds[n] / seconds[base], memory[n], memory[n] / memory[base]] for n in CASES]
    print_table(["case", "step s", "time vs (a)", "peak MiB", "memory vs (a)"], rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(args.device), "batch": args.batch, "seq": args.seq, "bf16": args.bf16,
                       "rows": [dict(zip(["case", "s", "time_ratio", "mib", "memory_ratio"], r)) for r in rows]}, f,
                      indent=1)


if __name__ == "__main__":
    main()
