"""Every trainable mrl_hf family, tiny and in float64, trained with MRLTrainer and by a reference loop in plain torch.

Used by tests/test_training_matrix.py in-process (one process) and under
``python -m torch.distributed.run --nproc_per_node 2 training_matrix.py KINDS OUT`` (gloo, CPU), which saves each
kind's parameters and logs to ``OUT/<kind>.pt``.

The reference loop is what each setting means, written without the Trainer: a step over a global batch of
``GLOBAL_BATCH`` rows split into ``micro`` equal micro-batches, gradients summed over them, then one SGD update
``p -= LR * grad``. The loss of a micro-batch is
- token/label-weighted families (MLM, ViT): the micro-batch's mean loss times its share of the labelled items of the
  global batch (what ``BertForMaskedLM`` computes with ``num_items_in_batch``), so any micro-batching gives the
  loss of the global batch;
- batch-mean families (ResNet: BatchNorm uses each micro-batch's statistics; contrastive and distillation losses:
  in-batch negatives / similarities within the micro-batch): the micro-batch's loss divided by ``micro``.
Several processes are micro-batches too, except for the families that gather across processes (contrastive,
ALIGN, distillation): they see the global batch, as one process does.
"""
import os
import sys

import torch
from transformers import AutoConfig, BertConfig, TrainingArguments, ViTConfig, default_data_collator

from mrl_hf.distillation import MatryoshkaDistillationLoss, MatryoshkaDistillationTrainer
from mrl_hf.distributed import end_distributed_run
from mrl_hf.modeling import (MRLBertConfig, MRLBertForMaskedLM, MRLBertModel, MRLImageConfig, MRLMaskedLMConfig,
                             MRLModelForImageClassification, MRLModelForMaskedLM, MRLModelForSequenceClassification,
                             MRLModelForTextEmbedding, MRLResNetConfig, MRLResNetForImageClassification,
                             MRLTextClassificationConfig, MRLTextEmbeddingConfig, MRLViTConfig,
                             MRLViTForImageClassification)
from mrl_hf.modeling.align import MRLAlignConfig, MRLAlignModel
from mrl_hf.trainer import MRLTrainer

GLOBAL_BATCH, STEPS, N, LR = 8, 4, 32, 0.1
# The families' own classes, then the classes that wrap any transformers model (on families other than BERT/ViT).
KINDS = ("mlm", "embed", "resnet", "resnet_e", "vit", "vit_e", "align", "distill",
         "mlm_auto", "embed_auto", "seqcls_auto", "image_auto", "align_auto", "embed_cached")
# loss = sum over labelled items / their number in the global batch
ITEM_WEIGHTED = ("mlm", "vit", "vit_e", "mlm_auto", "seqcls_auto", "image_auto")
GATHERED = ("embed", "align", "distill", "embed_auto", "align_auto", "embed_cached")  # global-batch losses everywhere
# MRLTrainer settings per kind: "embed_cached" is "embed" through the cached loss (3-row mini-batches)
TRAINER_KWARGS = {"embed_cached": {"mini_batch_size": 3}}
NESTING = [4, 8, 16]
TINY_BERT = dict(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TINY_VIT = dict(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
TINY_RESNET = dict(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
TEACHER_DIM = 12
# Tiny configs of other families for the generic classes (no dropout, so every run is deterministic).
TINY_XLMR = AutoConfig.for_model("xlm-roberta", **TINY_BERT)
TINY_MPNET = AutoConfig.for_model("mpnet", **TINY_BERT)
TINY_QWEN3 = AutoConfig.for_model("qwen3", vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  num_key_value_heads=1, head_dim=8, intermediate_size=32, max_position_embeddings=16)
TINY_CONVNEXT = AutoConfig.for_model("convnext", num_channels=1, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                     patch_size=2)
TINY_DINOV2 = AutoConfig.for_model("dinov2", image_size=8, patch_size=4, num_channels=1, hidden_size=16,
                                   num_hidden_layers=1, num_attention_heads=2, mlp_ratio=2)


def build(kind):
    """A fresh model (same initial weights every call) and the N training rows."""
    if kind == "mlm_auto":  # the same masked rows as "mlm"
        data = build("mlm")[1]
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    ids = lambda: torch.randint(5, 60, (6,), generator=g)  # noqa: E731
    images = lambda: torch.randn(1, 8, 8, generator=g)  # noqa: E731
    if kind == "mlm":
        model = MRLBertForMaskedLM(MRLBertConfig(nesting_list=NESTING, **TINY_BERT))
        data = []
        for i in range(N):
            x = ids()
            labels = torch.full_like(x, -100)
            pos = torch.randperm(6, generator=g)[: 1 + i % 4]  # 1 to 4 masked tokens: uneven counts per row
            labels[pos], x[pos] = x[pos], 4
            data.append({"input_ids": x, "attention_mask": torch.ones_like(x), "labels": labels})
    elif kind in ("embed", "embed_cached"):
        model = MRLBertModel(MRLBertConfig(nesting_list=NESTING, **TINY_BERT))
        data = [{"input_ids": ids(), "positive_input_ids": ids()} for _ in range(N)]
    elif kind in ("resnet", "resnet_e", "vit", "vit_e"):
        efficient = kind.endswith("_e")
        if kind.startswith("resnet"):
            model = MRLResNetForImageClassification(MRLResNetConfig(**TINY_RESNET, nesting_list=NESTING, num_labels=5,
                                                                    efficient=efficient))
        else:
            model = MRLViTForImageClassification(MRLViTConfig(**TINY_VIT, nesting_list=NESTING, num_labels=5,
                                                              efficient=efficient))
        data = [{"pixel_values": images(), "labels": torch.tensor(i % 5)} for i in range(N)]
    elif kind == "align":
        model = MRLAlignModel(MRLAlignConfig(text_config=BertConfig(**TINY_BERT), vision_config=ViTConfig(**TINY_VIT),
                                             nesting_list=NESTING))
        data = [{"input_ids": ids(), "pixel_values": images()} for _ in range(N)]
    elif kind == "distill":
        model = MRLBertModel(MRLBertConfig(nesting_list=NESTING, **TINY_BERT))
        data = [{"input_ids": ids(), "teacher_embeddings": torch.randn(TEACHER_DIM, generator=g)} for _ in range(N)]
    elif kind == "mlm_auto":
        model = MRLModelForMaskedLM(MRLMaskedLMConfig(backbone_config=TINY_XLMR, nesting_list=NESTING))
    elif kind == "embed_auto":  # a decoder, last-token pooling; a milder temperature keeps SGD at LR 0.1 from diverging
        model = MRLModelForTextEmbedding(MRLTextEmbeddingConfig(backbone_config=TINY_QWEN3, pooling="last_token",
                                                                nesting_list=NESTING, contrastive_temperature=0.5))
        data = [{"input_ids": ids(), "positive_input_ids": ids()} for _ in range(N)]
    elif kind == "seqcls_auto":
        model = MRLModelForSequenceClassification(MRLTextClassificationConfig(backbone_config=TINY_MPNET,
                                                                              nesting_list=NESTING, num_labels=5))
        data = [{"input_ids": ids(), "labels": torch.tensor(i % 5)} for i in range(N)]
    elif kind == "image_auto":
        model = MRLModelForImageClassification(MRLImageConfig(backbone_config=TINY_CONVNEXT, nesting_list=NESTING,
                                                              num_labels=5, efficient=True))
        data = [{"pixel_values": images(), "labels": torch.tensor(i % 5)} for i in range(N)]
    elif kind == "align_auto":
        model = MRLAlignModel(MRLAlignConfig(text_config=TINY_XLMR, vision_config=TINY_DINOV2, nesting_list=NESTING))
        data = [{"input_ids": ids(), "pixel_values": images()} for _ in range(N)]
    else:
        raise ValueError(f"kind={kind!r}; choose one of {KINDS}.")
    return model.double(), [{k: v.double() if v.is_floating_point() else v for k, v in d.items()} for d in data]


def trainer_class(kind):
    return MatryoshkaDistillationTrainer if kind == "distill" else MRLTrainer


def train(kind, out_dir, world_size=1, grad_accum=1, checkpointing=False, resume_from=None, **overrides):
    """MRLTrainer over STEPS steps of a global batch of GLOBAL_BATCH rows, SGD, no clipping, in data order."""
    model, data = build(kind)
    if checkpointing:
        model.activation_checkpointing_enable()
    args = dict(output_dir=out_dir, per_device_train_batch_size=GLOBAL_BATCH // world_size // grad_accum,
                gradient_accumulation_steps=grad_accum, max_steps=STEPS, learning_rate=LR, optim="sgd",
                lr_scheduler_type="constant", max_grad_norm=0.0, logging_steps=1, report_to=[], disable_tqdm=True,
                use_cpu=True, seed=0, save_strategy="no", remove_unused_columns=False, dataloader_drop_last=True,
                train_sampling_strategy="sequential")
    trainer = trainer_class(kind)(model=model, args=TrainingArguments(**{**args, **overrides}), train_dataset=data,
                                  **TRAINER_KWARGS.get(kind, {}))
    trainer.kind = kind
    trainer.train(resume_from_checkpoint=resume_from)
    return trainer


def batch_loss(kind, model, inputs):
    """``(loss, per_dim_losses)`` of one micro-batch as the model (or the distillation loss) computes it alone: a
    mean over its rows or labelled items."""
    if kind == "distill":
        teacher = inputs.pop("teacher_embeddings")
        nested = MatryoshkaDistillationLoss(NESTING)(model(**inputs, return_loss=False).embeddings, teacher)
        return nested.loss, nested.per_dim_losses
    out = model(**inputs)
    return out.loss, out.per_dim_losses


def reference(kind, micro):
    """Parameters and per-step ``(loss, per_dim_losses)`` of the reference loop (see the module docstring)."""
    model, data = build(kind)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    logs = []
    size = GLOBAL_BATCH // micro
    for step in range(STEPS):
        rows = data[step * GLOBAL_BATCH:(step + 1) * GLOBAL_BATCH]
        for p in params:
            p.grad = None
        loss_sum, dims_sum = 0.0, 0.0
        for i in range(micro):
            batch = default_data_collator(rows[i * size:(i + 1) * size])
            share = 1 / micro
            if kind in ITEM_WEIGHTED:
                share = int((batch["labels"] != -100).sum()) / sum(int((r["labels"] != -100).sum()) for r in rows)
            loss, per_dim = batch_loss(kind, model, batch)
            loss, per_dim = loss * share, per_dim * share
            loss.backward()
            loss_sum, dims_sum = loss_sum + loss.detach(), dims_sum + per_dim
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p -= LR * p.grad
        logs.append({"loss": float(loss_sum), "dims": [float(v) for v in dims_sum]})
    return parameters(model), logs


def parameters(model):
    """Parameters and buffers (BatchNorm running statistics) by name."""
    return {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}


def evaluation(trainer, rows=16):
    """``eval_loss`` and ``eval_loss_dim_*`` over the first ``rows`` rows (each process evaluates its share). The
    training runs drop their last incomplete batch; evaluation keeps it (dataloader_drop_last applies to both), so
    an uneven ``rows`` really ends on a batch that accelerate evens out with repeated rows."""
    drop_last, trainer.args.dataloader_drop_last = trainer.args.dataloader_drop_last, False
    try:
        metrics = trainer.evaluate(eval_dataset=build(trainer.kind)[1][:rows])
    finally:
        trainer.args.dataloader_drop_last = drop_last
    return {"loss": metrics["eval_loss"], "dims": [metrics[f"eval_loss_dim_{m}"] for m in NESTING]}


def trainer_logs(trainer):
    """Per-step ``loss`` and ``loss_dim_*`` from a Trainer's log history."""
    logs = []
    for h in trainer.state.log_history:
        if "loss" in h:
            logs.append({"loss": h["loss"], "dims": [h[f"loss_dim_{m}"] for m in NESTING]})
    return logs


def run_two_processes(script: str, *args: str, port_base: int, timeout: int) -> None:
    """``python -m torch.distributed.run --nproc_per_node 2 tests/<script> ARGS`` on CPU (gloo), offline, one thread per
    process; fails the test with the processes' output if they do not finish cleanly within ``timeout`` seconds."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": here + os.pathsep + os.environ.get("PYTHONPATH", "")}
    port = str(port_base + os.getpid() % 1000)  # one port range per caller: xdist workers run them at once
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           port, os.path.join(here, script), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def main():
    torch.set_num_threads(1)
    out = sys.argv[2]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for kind in sys.argv[1].split(","):
        trainer = train(kind, os.path.join(out, kind), world_size=world, per_device_eval_batch_size=8 // world)
        evaluation_ = evaluation(trainer)  # every process takes part
        uneven = evaluation(trainer, rows=13)
        if trainer.is_world_process_zero():
            torch.save({"params": parameters(trainer.accelerator.unwrap_model(trainer.model)),
                        "logs": trainer_logs(trainer), "world_size": trainer.args.world_size, "eval": evaluation_,
                        "eval_uneven": uneven},
                       os.path.join(out, f"{kind}.pt"))


if __name__ == "__main__":
    main()
    end_distributed_run()
