"""Run by ``test_trainer_guards.py`` as ``python -m torch.distributed.run --nproc_per_node 2 nonfinite_skip_ddp.py
OUT``: an image classifier whose first batch is NaN on process 1 only, trained with ``nonfinite_loss="skip"``. Each
process saves whether it finished, how many batches it skipped and its parameters before and after."""
import os
import sys

import torch
from transformers import TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
import training_matrix as tm  # noqa: E402

from mrl_hf import MRLTrainer  # noqa: E402

torch.set_num_threads(1)
model, data = tm.build("vit")
data = [dict(row) for row in data]
for i in range(4, 8):  # process 1's rows of the first step (4 rows per process, in data order)
    data[i]["pixel_values"] = data[i]["pixel_values"] * float("nan")
args = TrainingArguments(sys.argv[1], per_device_train_batch_size=4, max_steps=2, report_to=[], logging_steps=1,
                         disable_tqdm=True, use_cpu=True, save_strategy="no", remove_unused_columns=False, optim="sgd",
                         train_sampling_strategy="sequential", ddp_timeout=60)
trainer = MRLTrainer(model=model, args=args, train_dataset=data, nonfinite_loss="skip")
before = tm.parameters(trainer.model)
trainer.train()
torch.save({"skipped": trainer.skipped_nonfinite_batches, "before": before, "after": tm.parameters(trainer.model),
            "logs": [h for h in trainer.state.log_history if "loss" in h]},
           os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
