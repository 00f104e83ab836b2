"""Train MRL, MRL-E and fixed-feature FF-k image classifiers on Fashion-MNIST and compare them per dim.

The toy-scale version of the paper's Figures 2-3: for each architecture (a small ResNet and a small ViT from
transformers, built from configs), train MRL, MRL-E and FF-k for every k in the nesting list, then evaluate
the frozen embeddings per dim with a linear probe and 1-NN, together with the baselines computed from the
full-dim FF model (SVD, first-m features, JL projection). Writes results.csv/json, a markdown table and a plot
per architecture, and an adaptive-classification summary.

    python examples/train_vision.py --output-dir outputs/vision                 # ~8 min on 2 CPU cores
    python examples/train_vision.py --arch resnet --train-size 5000 --epochs 2  # a quicker look

Offline, the data comes from the Debian package (`apt-get install -y dataset-fashion-mnist`); elsewhere
`--source hub` loads `fashion_mnist` from the Hugging Face Hub.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
from transformers import TrainingArguments

from mrl_hf.adaptive_classification import AdaptiveClassifier
from mrl_hf.data.images import ImageClassificationDataset, load_fashion_mnist, to_pixel_values
from mrl_hf.distributed import end_distributed_run, is_main_process
from mrl_hf.evaluation.classification import (encode_images, evaluate_baselines, evaluate_embeddings,
                                              oracle_accuracy)
from mrl_hf.evaluation.table import ResultsTable, atomic_write_text
from mrl_hf.modeling.vision import (MRLResNetConfig, MRLResNetForImageClassification, MRLViTConfig,
                                    MRLViTForImageClassification)
from mrl_hf.nesting import interpolated_dims
from mrl_hf.trainer import MRLTrainer

NESTING = [2, 4, 8, 16, 32]
ARCHS = {
    # 28x28 grayscale; the last stage (64 wide) is projected to the 32-d embedding, so features are signed
    "resnet": (MRLResNetForImageClassification, lambda **kw: MRLResNetConfig(
        num_channels=1, embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], layer_type="basic",
        **kw), 3e-3, 3),
    # 4x4 patches -> 49 tokens, 2 layers of width 64, [CLS] projected to 32
    "vit": (MRLViTForImageClassification, lambda **kw: MRLViTConfig(
        image_size=28, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, **kw), 1e-3, 15),  # a ViT from scratch needs more epochs than a ResNet
}


def train(arch: str, variant: str, nesting_list, train_set, args) -> torch.nn.Module:
    model_class, make_config, lr, epochs = ARCHS[arch]
    torch.manual_seed(args.seed)
    # embedding_dim = the last nesting size, so FF-k (nesting_list=[k]) is a k-dim embedding trained alone
    model = model_class(make_config(num_labels=10, nesting_list=nesting_list, embedding_dim=nesting_list[-1],
                                    efficient=variant == "MRL-E"))
    targs = TrainingArguments(output_dir=os.path.join(args.output_dir, "checkpoints"),
                              num_train_epochs=args.epochs or epochs, per_device_train_batch_size=128,
                              learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=0.05, report_to=[],
                              save_strategy="no", logging_steps=50, seed=args.seed, disable_tqdm=True,
                              use_cpu=not torch.cuda.is_available())
    start = time.time()
    MRLTrainer(model=model, args=targs, train_dataset=train_set).train()
    print(f"[{arch}] {variant} nesting={nesting_list}: trained in {time.time() - start:.0f}s", flush=True)
    return model


def run_arch(arch: str, data, args) -> tuple[ResultsTable, dict]:
    train_x, train_y, test_x, test_y = data
    train_set = ImageClassificationDataset(train_x, train_y)
    dims = sorted(NESTING + interpolated_dims(NESTING))
    metrics = ("linear probe", "1-NN")
    table = ResultsTable()
    summary = {}
    for variant in ("MRL", "MRL-E"):
        model = train(arch, variant, NESTING, train_set, args)
        tr = encode_images(model, train_x)
        te, logits = encode_images(model, test_x, return_logits=True)
        evaluate_embeddings(tr, train_y, te, test_y, dims, method=variant, metrics=metrics, table=table)
        half = len(test_y) // 2  # thresholds learned on one half of the test set, evaluated on the other
        cascade = AdaptiveClassifier(NESTING, efficient=variant == "MRL-E").fit(logits[:, :half], test_y[:half])
        summary[variant] = {"adaptive": vars(cascade.evaluate(logits[:, half:], test_y[half:])),
                            # inf ("never answer at this dim") as null: strict JSON has no Infinity
                            "thresholds": [None if t == float("inf") else t for t in cascade.thresholds.tolist()],
                            "oracle": oracle_accuracy(logits, test_y, NESTING)}
    for k in NESTING if args.ff else NESTING[-1:]:
        model = train(arch, f"FF-{k}", [k], train_set, args)
        tr, te = encode_images(model, train_x), encode_images(model, test_x)
        evaluate_embeddings(tr, train_y, te, test_y, [k], method="FF", metrics=metrics, table=table)
    # baselines from the full-dim fixed-feature model (FF-32): what you get without MRL
    evaluate_baselines(tr, train_y, te, test_y, dims, metrics=metrics, table=table, seed=args.seed)
    return table, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet", "vit"], choices=list(ARCHS))
    parser.add_argument("--output-dir", default="outputs/vision")
    parser.add_argument("--source", default="auto", choices=["auto", "idx", "hub"])
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--test-size", type=int, default=4000)
    parser.add_argument("--epochs", type=float, default=None, help="default: 3 for resnet, 15 for vit")
    parser.add_argument("--no-ff", dest="ff", action="store_false", help="train only FF-32, not FF-k for every k")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train_images, train_y = load_fashion_mnist("train", source=args.source, limit=args.train_size)
    test_images, test_y = load_fashion_mnist("test", source=args.source, limit=args.test_size)
    data = (to_pixel_values(train_images), train_y, to_pixel_values(test_images), test_y)
    os.makedirs(args.output_dir, exist_ok=True)
    for arch in args.arch:
        table, summary = run_arch(arch, data, args)
        if not is_main_process():  # under accelerate launch / torchrun, one process writes
            continue
        prefix = os.path.join(args.output_dir, arch)
        table.to_csv(prefix + "_results.csv")
        table.to_json(prefix + "_results.json")
        atomic_write_text(prefix + "_results.md", table.to_markdown(metric="linear probe") + "\n\n"
                          + table.to_markdown(metric="1-NN top-1") + "\n")
        atomic_write_text(prefix + "_adaptive.json", json.dumps(summary, indent=1))
        for metric, name in (("linear probe", "linear_probe"), ("1-NN top-1", "1nn")):
            table.plot(metric, f"{prefix}_{name}.png", title=f"Fashion-MNIST, {arch}: {metric}")
        print(table.to_markdown(metric="linear probe"), table.to_markdown(metric="1-NN top-1"), sep="\n\n")
        for variant, s in summary.items():
            a = s["adaptive"]
            print(f"{arch} {variant} adaptive: accuracy {a['accuracy']:.1f}% (full dim {a['full_dim_accuracy']:.1f}%),"
                  f" expected dim {a['expected_dim']:.1f}, expected cost {a['expected_cost']:.1f};"
                  f" oracle {s['oracle']['oracle']:.1f}%")


if __name__ == "__main__":
    main()
    end_distributed_run()  # before exit: see its docstring
