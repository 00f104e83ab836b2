"""Step time of the classes that wrap any transformers model against the family classes, on the same family.

Each pair has the same config, the same weights and the same batch: (a) the family class (``MRLBertModel``,
``MRLBertForMaskedLM``, ``MRLViTForImageClassification``, ``MRLResNetForImageClassification``), (b) the generic class
over the same family (``MRLModelForTextEmbedding``, ``MRLModelForMaskedLM``, ``MRLModelForImageClassification``).
One step = forward + backward + AdamW step, float32. Time: ``--repeats`` pairs of steps (a, b), alternating which runs
first; the table gives each case's median step and the median (and quartiles) of the per-pair ratio (b)/(a).
Target: (b)/(a) <= 1.01 (the wrapper adds no measurable step time).

    python benchmarks/bench_generic.py                # all-MiniLM-L6-v2 size (6 x 384), batch 16 x seq 64
    python benchmarks/bench_generic.py --device cuda --json out.json
"""
from __future__ import annotations

import json
import os
import sys

import torch
from transformers import BertConfig, ResNetConfig, ViTConfig

sys.path.insert(0, os.path.dirname(__file__))
from _measure import device_arguments, machine, print_table, time_paired  # noqa: E402

from mrl_hf.modeling import (  # noqa: E402
    MRLBertConfig,
    MRLBertForMaskedLM,
    MRLBertModel,
    MRLImageConfig,
    MRLMaskedLMConfig,
    MRLModelForImageClassification,
    MRLModelForMaskedLM,
    MRLModelForTextEmbedding,
    MRLResNetConfig,
    MRLResNetForImageClassification,
    MRLTextEmbeddingConfig,
    MRLViTConfig,
    MRLViTForImageClassification,
)

BERT = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
VIT = dict(image_size=64, patch_size=8, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
           intermediate_size=1536)
RESNET = dict(embedding_size=32, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic")
NESTING = [12, 24, 48, 96, 192, 384]


def pairs():
    """name -> (family model, generic model with the family model's weights, batch maker)."""
    torch.manual_seed(0)
    embed = MRLBertModel(MRLBertConfig(**BERT, nesting_list=NESTING))
    mlm = MRLBertForMaskedLM(MRLBertConfig(**BERT, nesting_list=NESTING))
    vit = MRLViTForImageClassification(MRLViTConfig(**VIT, nesting_list=NESTING, num_labels=100))
    resnet = MRLResNetForImageClassification(MRLResNetConfig(**RESNET, nesting_list=[16, 32, 64, 128, 256, 512],
                                                             num_labels=100, efficient=True))
    out = {
        "text embeddings (BERT)": (embed, MRLModelForTextEmbedding(MRLTextEmbeddingConfig(
            backbone_config=BertConfig(**BERT), nesting_list=NESTING)), "bert", "backbone", "pairs"),
        "masked LM (BERT)": (mlm, MRLModelForMaskedLM(MRLMaskedLMConfig(
            backbone_config=BertConfig(**BERT), nesting_list=NESTING)), None, None, "mlm"),
        "image classification (ViT)": (vit, MRLModelForImageClassification(MRLImageConfig(
            backbone_config=ViTConfig(**VIT), nesting_list=NESTING, num_labels=100)), "vit", "backbone", "images"),
        "MRL-E image classification (ResNet)": (resnet, MRLModelForImageClassification(MRLImageConfig(
            backbone_config=ResNetConfig(**RESNET), nesting_list=[16, 32, 64, 128, 256, 512], num_labels=100,
            efficient=True)), "resnet", "backbone", "images"),
    }
    for family, generic, old, new, _ in out.values():
        state = family.state_dict()
        if old is None:  # the masked LM keeps the family's layout under mlm.
            state = {f"mlm.{k}": v for k, v in state.items()}
        else:
            state = {(f"{new}.{k[len(old) + 1:]}" if k.startswith(old + ".") else k): v for k, v in state.items()}
            state = {k.replace("classifier.", "head."): v for k, v in state.items()}
        missing, unexpected = generic.load_state_dict(state, strict=False)
        assert not [k for k in missing if "head." not in k], missing  # heads are laid out alike, checked below
    return out


def make_batch(kind, batch, seq, device):
    g = torch.Generator().manual_seed(1)
    if kind == "pairs":
        return {"input_ids": torch.randint(1000, 30000, (batch, seq), generator=g).to(device),
                "positive_input_ids": torch.randint(1000, 30000, (batch, seq), generator=g).to(device)}
    if kind == "mlm":
        ids = torch.randint(1000, 30000, (batch, seq), generator=g)
        labels = ids.clone()
        labels[torch.rand(batch, seq, generator=g) > 0.15] = -100
        return {"input_ids": ids.to(device), "labels": labels.to(device)}
    return {"pixel_values": torch.randn(batch, 3, 64, 64, generator=g).to(device),
            "labels": torch.randint(0, 100, (batch,), generator=g).to(device)}


def make_step(model, inputs):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        opt.step()

    return step


def main(argv=None):
    parser = device_arguments(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for name, (family, generic, *_, kind) in pairs().items():
        inputs = make_batch(kind, args.batch, args.seq, args.device)
        family.to(args.device).eval()
        generic.to(args.device).eval()
        with torch.no_grad():  # same weights, same loss (without dropout): the pair compares like with like
            a, b = family(**inputs).loss.item(), generic(**inputs).loss.item()
        assert abs(a - b) <= 1e-4 * abs(a), (name, a, b)
        family.train(), generic.train()
        t = time_paired(make_step(family, inputs), make_step(generic, inputs), repeats=args.repeats,
                        device=args.device)
        rows.append([name, type(family).__name__, t["a"], type(generic).__name__, t["b"], t["ratio"],
                     f"{t['q1']:.3f}-{t['q3']:.3f}"])
        family.cpu(), generic.cpu()
    print(f"# batch {args.batch} (text: seq {args.seq}; images 64x64), float32, {args.repeats} pairs of steps; "
          f"{machine(args.device)}")
    print_table(["task", "(a) family class", "(a) step s", "(b) generic class", "(b) step s", "(b)/(a) median",
                 "quartiles"], rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(args.device), "rows": [dict(zip(
                ["task", "family", "family_s", "generic", "generic_s", "ratio", "quartiles"], r)) for r in rows]}, f, indent=1)


if __name__ == "__main__":
    main()
