"""Train a tiny MLM, embedding or ALIGN model for a few steps with MRLTrainer and save its parameters.

Run by tests/test_distributed.py both in-process (one process) and under
``python -m torch.distributed.run --nproc_per_node 2`` (gloo, CPU): ``python distributed_train.py KIND OUT``.
Every example has the same number of labelled tokens, so per-process mean losses average to the global mean.
"""
import os
import sys

import torch
from transformers import BertConfig, TrainingArguments, ViTConfig

from mrl_hf.distributed import end_distributed_run
from mrl_hf.modeling import MRLBertConfig, MRLBertForMaskedLM, MRLBertModel
from mrl_hf.modeling.align import MRLAlignConfig, MRLAlignModel
from mrl_hf.trainer import MRLTrainer

GLOBAL_BATCH, STEPS, N = 8, 3, 24
KINDS = ("mlm", "embed", "align")
TINY_BERT = dict(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def build(kind):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    ids = lambda: torch.randint(5, 60, (6,), generator=g)  # noqa: E731
    if kind == "mlm":
        model = MRLBertForMaskedLM(MRLBertConfig(nesting_list=[4, 8, 16], **TINY_BERT))
        data = []
        for _ in range(N):
            x = ids()
            labels = torch.full_like(x, -100)
            pos = torch.randperm(6, generator=g)[:2]
            labels[pos], x[pos] = x[pos], 4  # two masked tokens per example
            data.append({"input_ids": x, "attention_mask": torch.ones_like(x), "labels": labels})
    elif kind == "embed":
        model = MRLBertModel(MRLBertConfig(nesting_list=[4, 8, 16], **TINY_BERT))
        data = [{"input_ids": ids(), "positive_input_ids": ids()} for _ in range(N)]
    elif kind == "align":
        vision = ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
        text = BertConfig(**{**TINY_BERT, "max_position_embeddings": 16})
        model = MRLAlignModel(MRLAlignConfig(text_config=text, vision_config=vision, nesting_list=[4, 8, 16]))
        data = [{"input_ids": ids(), "pixel_values": torch.randn(1, 8, 8, generator=g)} for _ in range(N)]
    else:
        raise ValueError(f"kind={kind!r}; choose one of {KINDS}.")
    return model.double(), [{k: v.double() if v.is_floating_point() else v for k, v in d.items()} for d in data]


def train(kind, out_dir, world_size=1, **overrides):
    model, data = build(kind)
    args = dict(output_dir=out_dir, per_device_train_batch_size=GLOBAL_BATCH // world_size, max_steps=STEPS,
                learning_rate=1e-2, logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True, seed=0,
                save_strategy="no", remove_unused_columns=False, dataloader_drop_last=True)
    trainer = MRLTrainer(model=model, args=TrainingArguments(**{**args, **overrides}), train_dataset=data)
    trainer.train()
    return trainer


def main():
    torch.set_num_threads(1)
    out = sys.argv[2]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for kind in sys.argv[1].split(","):
        trainer = train(kind, os.path.join(out, kind), world_size=world)
        if trainer.is_world_process_zero():
            params = {n: p.detach().clone() for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()}
            losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
            torch.save({"params": params, "losses": losses}, os.path.join(out, f"{kind}.pt"))


if __name__ == "__main__":
    main()
    end_distributed_run()
