"""Training-step time of a ResNet-50-sized MRL classifier vs the plain classifier (CPU).

ResNet-50 (transformers' ResNetConfig defaults, 2048-d pooled feature), 1,000 classes, M={8,...,2048}:
(a) transformers.ResNetForImageClassification; (b) MRLResNetForImageClassification (MRL, 9 heads);
(c) the same with MRL-E (one shared head). One step = forward + backward + SGD update on the same batch.
Time: median of the repeats, all cases in this process, run round-robin (see _measure.py). Target: <= 1.05x.

Usage: python benchmarks/bench_vision.py [--batch 8] [--image-size 224] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

import torch
from transformers import ResNetConfig, ResNetForImageClassification

sys.path.insert(0, os.path.dirname(__file__))
from _measure import print_table, time_interleaved  # noqa: E402

from mrl_hf.modeling.vision import MRLResNetConfig, MRLResNetForImageClassification  # noqa: E402

CLASSES = 1000


def make_step(case: str, pixel_values: torch.Tensor, labels: torch.Tensor):
    torch.manual_seed(0)
    if case == "plain":
        model = ResNetForImageClassification(ResNetConfig(num_labels=CLASSES))
    else:
        model = MRLResNetForImageClassification(MRLResNetConfig(num_labels=CLASSES, efficient=case == "MRL-E"))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        opt.step()

    return step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    pixel_values = torch.randn(args.batch, 3, args.image_size, args.image_size)
    labels = torch.randint(0, CLASSES, (args.batch,))
    cases = {"(a) ResNetForImageClassification": "plain", "(b) MRL ResNet-50": "MRL", "(c) MRL-E ResNet-50": "MRL-E"}
    seconds = time_interleaved({name: make_step(c, pixel_values, labels) for name, c in cases.items()},
                               repeats=args.repeats)
    base = seconds["(a) ResNetForImageClassification"]
    print(f"# ResNet-50, 2048-d -> {CLASSES} classes, batch {args.batch} x 3x{args.image_size}x{args.image_size}, "
          f"M=[8..2048]; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print_table(["case", "train step s", "time vs (a)"], [[n, seconds[n], seconds[n] / base] for n in cases])


if __name__ == "__main__":
    main()
