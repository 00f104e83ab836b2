"""Two processes whose last batches hold different numbers of rows (even_batches=False: rank 0 four, rank 1 two):
the plain and the cached (mini_batch_size=3) contrastive loss, one after the other, then an evaluation of 14 rows in
batches of 4 per process (uneven again), also with eval_use_gather_object=True; rank 0 saves everything.
Launched by tests/test_cached_loss.py with torch.distributed.run."""
import os
import sys

import torch
from transformers import TrainingArguments

import training_matrix as tm
from mrl_hf.distributed import end_distributed_run
from mrl_hf.trainer import MRLTrainer


def run(out, **kwargs):
    model, data = tm.build("embed")
    args = TrainingArguments(out, per_device_train_batch_size=4, num_train_epochs=1, learning_rate=0.1, optim="sgd",
                             logging_steps=1, report_to=[], disable_tqdm=True, use_cpu=True, save_strategy="no",
                             remove_unused_columns=False, train_sampling_strategy="sequential",
                             accelerator_config={"even_batches": False})
    trainer = MRLTrainer(model=model, args=args, train_dataset=data[:30], **kwargs)  # 30 rows: 4 + 4 steps of 8, 4 + 2
    trainer.train()
    return trainer


if __name__ == "__main__":
    torch.set_num_threads(1)
    out = sys.argv[1]
    runs = {name: run(os.path.join(out, name), **kwargs)
            for name, kwargs in (("plain", {}), ("cached", {"mini_batch_size": 3}))}
    trainer = runs["plain"]
    evaluations = []
    for gather_object in (False, True):
        trainer.args.eval_use_gather_object = gather_object
        metrics = trainer.evaluate(eval_dataset=tm.build("embed")[1][:14])
        evaluations.append({"loss": metrics["eval_loss"], "dims": [metrics[f"eval_loss_dim_{m}"] for m in tm.NESTING]})
    if trainer.is_world_process_zero():
        saved = {name: {"params": tm.parameters(t.accelerator.unwrap_model(t.model)), "logs": tm.trainer_logs(t),
                        "steps": t.state.global_step} for name, t in runs.items()}
        torch.save({**saved, "evaluations": evaluations}, os.path.join(out, "runs.pt"))
    end_distributed_run()
