"""MRLTrainer: a ``transformers.Trainer`` that logs the loss at every nesting size, plus per-size metrics.

Works with any model whose outputs carry ``per_dim_losses`` (shape ``(|M|,)``) and whose config has
``nesting_list``. Training logs get ``loss_dim_{m}``, evaluation metrics ``eval_loss_dim_{m}``, each aggregated
exactly as the Trainer aggregates ``loss`` / ``eval_loss`` (the same gradient-accumulation scaling, the mean over
processes, the mean over the steps since the last log), so ``loss == sum_m c_m * loss_dim_{m}`` in every log.
The per-dim values stay on the device until a log is written: no host synchronisation per step.
"""
from __future__ import annotations

import copy
import inspect
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import find_batch_size
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

from .nesting import validate_nesting_list
from .resumption import (COLLATOR_STATE_FILE, GENERATOR_STATE_FILE, RecordingCollator, checkpoint_problem,
                         fsync_tree, generator_state, has_optimizer_state, set_aside, set_generator_state)

logger = logging.get_logger(__name__)

_NO_STEP = 2**62  # "no non-finite loss seen yet" in the per-dim first-bad-step record


def _check_launched_world_size(args) -> None:
    """Stop a multi-process launch that the Trainer would run as N independent copies of the whole training."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and args.world_size == 1:
        raise ValueError(
            f"WORLD_SIZE={launched} is set, but TrainingArguments set up no distributed training (device "
            f"{args.device}), so each process would train alone on all the data. On a machine without a GPU, "
            "transformers trains in parallel only with TrainingArguments(..., use_cpu=True): pass "
            "use_cpu=not torch.cuda.is_available(). Otherwise start the processes with torchrun / accelerate launch "
            "(they set LOCAL_RANK), or unset WORLD_SIZE for a single-process run."
        )


def _forward_parameters(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


class MRLTrainer(Trainer):
    """``Trainer`` with per-nesting-size loss logging. Everything else (``DataCollatorForLanguageModeling``,
    gradient accumulation, ``evaluate()``, ``save_model()``, ``resume_from_checkpoint``) is the stock Trainer.

    - ``TrainingArguments(label_smoothing_factor=eps)`` smooths the nested cross-entropy at every size (models
      whose ``forward`` takes ``smoothing``: the masked LM and the image classifiers); for a model without class
      labels (contrastive, distillation) it is refused. A ``compute_loss_func`` is refused: it would replace the
      nested loss by a loss on the full-size outputs.
    - ``nonfinite_loss="raise"`` (default): a NaN/inf loss stops training with an error naming the nesting dim(s)
      and the step where it first appeared. The check runs where the Trainer reads values back anyway (each log,
      each checkpoint save, the end of training), so no checkpoint with non-finite weights is written.
      ``"skip"`` drops the gradient of a batch whose loss is not finite; deciding that before the backward pass
      costs one host synchronisation per micro-batch. The optimizer step still runs (on the other micro-batches'
      gradient, or none): momentum and weight decay still move the weights and the learning-rate schedule
      advances, as with a batch whose gradient happens to be zero.

    With ``mrl_hf.data.collator.PairCollator`` (raw text pairs tokenized per batch) the dataset columns must reach the
    collator, so ``remove_unused_columns`` is switched off for you.

    Fine-tuning that keeps what the model knew (embedding models): ``teacher_weight=w > 0`` adds ``w`` times the
    similarity distillation of ``mrl_hf.distillation`` (pairwise + top-k + listwise) between the anchors' embeddings
    and a frozen teacher's embeddings of the same anchors, at the full size only (``teacher_sizes="full"``, default:
    the small sizes are what the Matryoshka loss must change, the full size should stay what it was) or at every
    nesting size (``"all"``). ``teacher="original"`` (default) is a frozen copy of the model as it is when the trainer
    is built; or pass any model whose ``forward(input_ids, attention_mask)`` gives ``embeddings``. The teacher runs
    without gradient, once per distinct anchor: its embeddings are kept (one vector per anchor) and reused in later
    epochs; its term is a batch-level loss like the contrastive one (gathered across
    processes with the embeddings), and is part of ``loss`` and of each ``loss_dim_{m}``; a batch of one anchor
    (an epoch's last, say) has no similarities to keep, and adds nothing. What it buys is measured
    in docs/finetune.md (benchmarks/bench_finetune_vs_st.py).

    Large contrastive batches without more memory (embedding models trained on pairs): ``mini_batch_size=k`` embeds
    each batch ``k`` rows at a time and back-propagates the nested loss through the encoder one mini-batch at a time
    (``mrl_hf.cached_loss``, GradCache), so a batch of 512 in-batch negatives costs the activation memory of ``k``
    rows and about one more forward pass per row. The gradient is the uncached one (dropout masks replayed), also
    across processes (the loss is over the gathered global batch; DDP all-reduces each mini-batch's backward).

    Fine-tuning that moves the prefixes, not the full-size geometry: with an output rotation
    (``mrl_hf.add_output_rotation(model)``), ``rotation_learning_rate=lr`` trains it at its own learning rate (the
    encoder keeps ``TrainingArguments.learning_rate``; same schedule) and makes it orthogonal again after every
    optimiser step (``mrl_hf.rotation``). Measured in docs/finetune.md.

    A frozen bottom: ``mrl_hf.freeze_bottom(model, blocks)`` before building the trainer keeps the encoder's embedding
    layer and first ``blocks`` blocks as they are; the trainer optimises what still requires a gradient.
    """

    NONFINITE_ACTIONS = ("raise", "skip")

    def __init__(self, *args, nonfinite_loss: str = "raise", teacher="original", teacher_weight: float = 0.0,
                 teacher_sizes: str = "full", mini_batch_size: int | None = None,
                 rotation_learning_rate: float | None = None, **kwargs):
        if nonfinite_loss not in self.NONFINITE_ACTIONS:
            raise ValueError(f"nonfinite_loss={nonfinite_loss!r}; choose 'raise' (stop with an error naming the "
                             "nesting dim) or 'skip' (drop that batch's gradient and go on).")
        if isinstance(teacher_weight, bool) or not isinstance(teacher_weight, (int, float)) or not teacher_weight >= 0:
            raise ValueError(f"teacher_weight={teacher_weight!r} must be a number >= 0 (0 turns the teacher off).")
        if teacher_sizes not in ("full", "all"):
            raise ValueError(f"teacher_sizes={teacher_sizes!r}; choose 'full' (the teacher term at the full size only) "
                             "or 'all' (at every nesting size).")
        if rotation_learning_rate is not None and (isinstance(rotation_learning_rate, bool) or not isinstance(
                rotation_learning_rate, (int, float)) or not rotation_learning_rate > 0):
            raise ValueError(f"rotation_learning_rate={rotation_learning_rate!r} must be a number > 0 (None: no "
                             "output rotation).")
        if teacher is None and teacher_weight:
            raise ValueError("teacher=None with teacher_weight > 0: pass teacher='original' (a frozen copy of the "
                             "model as it is now) or a model whose forward gives embeddings.")
        if isinstance(teacher, str) and teacher != "original" or not isinstance(teacher, (str, torch.nn.Module,
                                                                                          type(None))):
            raise ValueError(f"teacher={teacher!r}; pass 'original' (a frozen copy of the model as it is now) or a "
                             "model whose forward gives embeddings.")
        if not teacher_weight and isinstance(teacher, torch.nn.Module):
            warnings.warn("a teacher model is given, but teacher_weight=0 turns the teacher term off; pass "
                          "teacher_weight > 0 (e.g. 1.0) to train with it.", UserWarning, stacklevel=2)
        self.nonfinite_loss = nonfinite_loss
        self.skipped_nonfinite_batches = 0
        super().__init__(*args, **kwargs)
        if rotation_learning_rate is not None and self.model_init is not None:
            raise ValueError("rotation_learning_rate keeps the projection of the model given here a rotation, but "
                             "model_init builds a new model when training starts; pass model= instead of model_init=.")
        self._check_precision_and_averaging()
        from .adaptor import has_asymmetric_adaptor

        if has_asymmetric_adaptor(self.model):
            raise ValueError("the model's adaptor is asymmetric (queries centred on their own mean), and MRLTrainer "
                             "embeds every text as a document; train the encoder before attaching it, or attach a "
                             "symmetric adaptor (fitted without queries=).")
        self.rotation_learning_rate = rotation_learning_rate
        self._rotation = self._setup_rotation() if rotation_learning_rate is not None else None
        if rotation_learning_rate is None:
            self._warn_if_rotation_trains_freely()
        self.teacher_weight, self.teacher_sizes = float(teacher_weight), teacher_sizes
        self.teacher, self.teacher_loss = self._build_teacher(teacher) if self.teacher_weight else (None, None)
        self._teacher_cache = {}
        self.mini_batch_size = self._check_mini_batch_size(mini_batch_size)
        from .data.collator import PairCollator

        if isinstance(self.data_collator, PairCollator) and self.args.remove_unused_columns:
            self.args.remove_unused_columns = False
        if self.compute_loss_func is not None:
            raise ValueError(
                "MRLTrainer trains the model's nested (Matryoshka) loss; compute_loss_func would replace it by a loss "
                "on the full-size outputs only. Set the nested loss's options on the model (relative_importance, "
                "TrainingArguments.label_smoothing_factor), or subclass MRLTrainer and override compute_nested_loss.")
        self._smoothing = self._check_label_smoothing()
        self._train_dims = self._eval_dims = None
        self._eval_rows = None
        self._dims_window_start = None
        self._nonfinite = None
        self._resuming, self._rng_replayed = None, False
        _check_launched_world_size(self.args)
        fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
        if fsdp_asked and self.args.use_cpu and not self.is_fsdp_enabled and self.is_world_process_zero():
            logger.warning("accelerate launch asked for FSDP, but this Trainer runs without it: with use_cpu=True (a "
                           "machine without a GPU) transformers does not enable FSDP, and the processes train with DDP.")

    def _check_precision_and_averaging(self) -> None:
        if self.args.fp16 and self.args.device.type == "cpu":
            raise ValueError("fp16=True on a CPU trains in float32 (accelerate's fp16 autocast runs on GPUs only); use "
                             "bf16=True for mixed precision on a CPU, or leave fp16 out.")
        averaged = self.args.average_tokens_across_devices
        if self.args.world_size > 1 and not averaged and self.model_accepts_loss_kwargs:
            raise ValueError("average_tokens_across_devices=False with several processes divides each process's loss "
                             "by its own count of labelled tokens / rows: the mean of the processes' means, not the "
                             "global batch's mean that one process trains; leave it True (the default).")
        from .data.collator import PairCollator

        if self.args.include_num_input_tokens_seen != "no" and isinstance(self.data_collator, PairCollator):
            warnings.warn("include_num_input_tokens_seen counts the tokens of input_ids only, the anchors of each pair "
                          "(the Trainer's count); the positives and negatives are not in num_input_tokens_seen.",
                          UserWarning, stacklevel=3)

    def _warn_if_rotation_trains_freely(self) -> None:
        from .rotation import check_rotation

        model = self.accelerator.unwrap_model(self.model)
        projection = getattr(model, "projection", None)
        if not isinstance(projection, torch.nn.Linear) or not projection.weight.requires_grad \
                or projection.weight.numel() != projection.in_features * projection.out_features:  # ZeRO-3 shard
            return
        try:
            check_rotation(model)
        except ValueError:
            return  # not a rotation: a projection that trains as any layer does
        warnings.warn("the model's projection is an output rotation (orthogonal, zero bias), and without "
                      "rotation_learning_rate it trains as a free linear map and stops being one; "
                      "pass rotation_learning_rate (mrl-hf train --rotation-lr 1e-2) to keep it a rotation.",
                      UserWarning, stacklevel=3)

    def _setup_rotation(self):
        from .rotation import check_rotation, make_orthogonal

        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise ValueError("rotation_learning_rate is not supported with DeepSpeed or FSDP (the rotation is made "
                             "orthogonal on the full weight after each step); train it with DDP or one process.")
        if self.optimizer is not None:
            raise ValueError("rotation_learning_rate needs the trainer to build the optimizer (the rotation gets its "
                             "own parameter group); with your own optimizers=(...), leave it unset, give the "
                             "projection's weight a group of its own and call mrl_hf.rotation.make_orthogonal("
                             "model.projection) after each step.")
        rotation = check_rotation(self.model)
        if rotation.bias is not None:  # a reloaded rotation's bias trains unless frozen here; a shift moves the cosines
            rotation.bias.requires_grad_(False)
        if not rotation.weight.requires_grad:
            raise ValueError("the output rotation's weight is frozen (requires_grad=False); nothing would train it.")

        trainer = self

        class _Orthogonal(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if not torch.isfinite(rotation.weight).all():  # the SVD would fail with a LinAlgError
                    trainer._raise_if_nonfinite()
                    raise FloatingPointError(f"the output rotation holds NaN or inf after step {state.global_step}; "
                                             "lower rotation_learning_rate or the learning rate.")
                make_orthogonal(rotation)

        self.add_callback(_Orthogonal())
        return rotation

    def create_optimizer(self, *args, **kwargs):
        if self._rotation is None or self.optimizer is not None:
            return super().create_optimizer(*args, **kwargs)
        optimizer = super().create_optimizer(*args, **kwargs)
        weight = self._rotation.weight
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if p is not weight]
        optimizer.add_param_group({"params": [weight], "lr": self.rotation_learning_rate, "weight_decay": 0.0})
        return optimizer

    def _check_mini_batch_size(self, mini_batch_size):
        if mini_batch_size is None:
            return None
        if isinstance(mini_batch_size, bool) or not isinstance(mini_batch_size, int) or mini_batch_size < 1:
            raise ValueError(f"mini_batch_size={mini_batch_size!r} must be a whole number >= 1 (rows embedded at a "
                             "time by the cached contrastive loss), or None to embed the whole batch at once.")
        model = self._require_pair_loss(f"mini_batch_size={mini_batch_size}", "the cached loss splits the in-batch "
                                        "contrastive loss of a text embedding model", "mini_batch_size=None")
        if getattr(model.config, "embed_duplicates_once", False):
            raise ValueError(f"mini_batch_size={mini_batch_size} with config.embed_duplicates_once=True: the cached "
                             "loss embeds every row (a repeated text gets its own dropout mask and costs a forward "
                             "pass), so it would train otherwise than the uncached loss that setting asks for. Set "
                             "model.config.embed_duplicates_once = False, or mini_batch_size=None (mrl-hf "
                             "train: drop --embed-duplicates-once or --mini-batch-size).")
        return mini_batch_size

    def _require_pair_loss(self, setting: str, purpose: str, off: str):
        """The unwrapped model, if it is a text embedding model trained on pairs through MRLTrainer's own loss (what
        the teacher and the cached loss work on); else a ``ValueError`` naming ``setting`` and how to turn it ``off``."""
        model = self.accelerator.unwrap_model(self.model)
        if "positive_input_ids" not in _forward_parameters(model) or not hasattr(getattr(model, "config", None),
                                                                                  "nesting_list"):
            raise ValueError(f"{setting}: {purpose}, but {type(model).__name__} is not a text embedding model trained "
                             f"on pairs (MRLBertModel, MRLModelForTextEmbedding). Set {off}.")
        if type(self).compute_nested_loss is not MRLTrainer.compute_nested_loss:
            raise ValueError(f"{setting}, but {type(self).__name__} computes its own loss (a distillation trainer "
                             f"distils already; {setting.split('=')[0]} works on MRLTrainer's pair loss). Set {off}.")
        return model

    def _build_teacher(self, teacher):
        from .distillation import MatryoshkaDistillationLoss

        model = self._require_pair_loss(f"teacher_weight={self.teacher_weight}", "the teacher term keeps an embedding "
                                        "model close to its teacher", "teacher_weight=0")
        config = model.config
        coefs = getattr(config, "relative_importance", None)
        if self.teacher_sizes == "full" and coefs and not coefs[-1] > 0:  # its log share is divided by that weight
            raise ValueError(f"teacher_sizes='full' logs the teacher term under the full size, whose "
                             f"relative_importance is {coefs[-1]}; give the full size a weight > 0, or use "
                             "teacher_sizes='all'.")
        if isinstance(teacher, str):  # "original": __init__ checked the value
            teacher = copy.deepcopy(model)
        teacher.requires_grad_(False).eval()
        sizes = len(config.nesting_list)
        weights = [0.0] * (sizes - 1) + [1.0] if self.teacher_sizes == "full" else config.relative_importance
        return teacher, MatryoshkaDistillationLoss(config.nesting_list, weights)

    def _add_teacher_term(self, model, inputs, loss, outputs):
        """``loss + w * distillation(anchors' embeddings, teacher's embeddings of the anchors)``; the per-size terms
        are added to ``outputs.per_dim_losses`` likewise."""
        from .modeling.gather import all_gather_with_grad

        student = outputs["embeddings"]
        target = self._teacher_embeddings(inputs, student.device)
        config = self.accelerator.unwrap_model(model).config
        if getattr(config, "gather_across_processes", True) and self.accelerator.num_processes > 1:
            student, target = all_gather_with_grad(student), all_gather_with_grad(target)
        if student.shape[0] < 2:  # one anchor: no similarity between anchors to keep
            return loss, outputs
        nested = self.teacher_loss(student, target.to(student.dtype))
        per_dim = nested.per_dim_losses
        if self.teacher_sizes == "full":  # logged at the full size only, so that loss == sum_m c_m * loss_dim_m holds
            coefs = getattr(config, "relative_importance", None)
            per_dim = torch.cat([torch.zeros_like(per_dim[:-1]), per_dim[-1:] / (coefs[-1] if coefs else 1.0)])
        outputs["per_dim_losses"] = outputs["per_dim_losses"] + self.teacher_weight * per_dim
        return loss + self.teacher_weight * nested.loss, outputs

    def _teacher_embeddings(self, inputs, device) -> torch.Tensor:
        """The teacher's embeddings of the batch's anchors. Each distinct anchor (its unpadded token ids) goes through
        the teacher once per trainer and is kept (one vector per anchor, on ``device``), so later epochs cost no
        teacher forward at all."""
        names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if inputs.get(k) is not None]
        rows = {k: inputs[k].cpu().numpy() for k in names}
        keys, missing = [], {}  # missing: the first row of each anchor not in the cache yet
        for i in range(len(rows["input_ids"])):
            keep = rows["attention_mask"][i].astype(bool) if "attention_mask" in rows else slice(None)
            keys.append(b"|".join(rows[k][i][keep].tobytes() for k in names if k != "attention_mask"))
            if keys[-1] not in self._teacher_cache:
                missing.setdefault(keys[-1], i)
        if missing:
            index = torch.tensor(sorted(missing.values()), device=inputs["input_ids"].device)
            with torch.no_grad():
                self.teacher.to(device)
                fresh = self.teacher(**{k: inputs[k].index_select(0, index) for k in names}).embeddings
            for i, vector in zip(index.tolist(), fresh):
                self._teacher_cache[keys[i]] = vector
        return torch.stack([self._teacher_cache[key] for key in keys])

    def _check_label_smoothing(self) -> float:
        eps = float(self.args.label_smoothing_factor or 0.0)
        if not eps:
            return 0.0
        model = self.accelerator.unwrap_model(self.model)
        if "smoothing" not in _forward_parameters(model) or type(self).compute_nested_loss is not \
                MRLTrainer.compute_nested_loss:
            raise ValueError(
                f"label_smoothing_factor={eps}, but the loss of {type(model).__name__} under {type(self).__name__} has "
                "no class labels to smooth (a contrastive or distillation loss). Set label_smoothing_factor=0.")
        self.label_smoother = None  # the model smooths every nesting size itself; the stock smoother sees one
        return eps

    def _dim_names(self, count: int) -> list[str]:
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        dims = getattr(config, "nesting_list", None)
        if dims is not None and len(dims) == count:
            return [str(m) for m in dims]
        return [f"index{i}" for i in range(count)]  # a model whose losses are not one per nesting_list entry

    # ---- the loss of a batch ----------------------------------------------------------------------------------
    def compute_nested_loss(self, model, inputs, num_items_in_batch=None):
        """``(loss, outputs)`` of one batch, ``outputs`` carrying ``per_dim_losses``; subclasses change the loss here
        (``MatryoshkaDistillationTrainer``). The stock ``Trainer.compute_loss`` by default."""
        if self.mini_batch_size and model.training:
            from .cached_loss import cached_pair_loss

            config = self.accelerator.unwrap_model(model).config
            teacher = None if self.teacher is None else (
                lambda loss, outputs: self._add_teacher_term(model, inputs, loss, outputs))
            return cached_pair_loss(model, config, inputs, self.mini_batch_size, teacher)
        if self._smoothing:
            inputs = {**inputs, "smoothing": self._smoothing}
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if self.teacher is not None and model.training:
            loss, outputs = self._add_teacher_term(model, inputs, loss, outputs)
        return loss, outputs

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = self.compute_nested_loss(model, inputs, num_items_in_batch)
        per_dim = outputs.get("per_dim_losses") if isinstance(outputs, dict) else None
        if per_dim is not None:
            per_dim = per_dim.detach().float().reshape(-1, per_dim.shape[-1]).mean(0)  # DataParallel: one row per GPU
        if model.training:
            loss = self._record_train_step(model, loss, per_dim, num_items_in_batch)
        elif per_dim is not None:
            rows = find_batch_size(inputs) or 1  # eval_loss is the mean over rows of per-batch losses
            per_row = (per_dim * self._items_factor(num_items_in_batch)).expand(rows, -1)
            counted = torch.cat([per_row, per_row.new_ones(rows, 1)], 1)  # last column: 1 for a real row
            if self.accelerator.num_processes > 1:
                # as the Trainer gathers eval_loss: gather_for_metrics drops the rows accelerate repeats to even out
                # the last batch, which a sum over processes would count; padded to one shape first, since with
                # even_batches=False the processes' last batches differ (padding rows count 0)
                counted = self.accelerator.pad_across_processes(counted.contiguous(), dim=0)
                counted = self.accelerator.gather_for_metrics(counted, use_gather_object=False)
            sums = counted.sum(0)
            self._eval_dims = sums[:-1] if self._eval_dims is None else self._eval_dims + sums[:-1]
            self._eval_rows = float(sums[-1]) + (self._eval_rows or 0)
        return (loss, outputs) if return_outputs else loss

    def _items_factor(self, num_items_in_batch) -> float:
        """What ``Trainer.compute_loss`` multiplies a loss normalised by the global ``num_items_in_batch`` by (the
        number of processes, which DDP's gradient averaging and the logged mean over processes divide again)."""
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None and self.args.average_tokens_across_devices:
            return self.accelerator.num_processes // self.get_tp_size()
        return 1

    def _log_scale(self, num_items_in_batch) -> float:
        """The factor by which the Trainer turns a batch's model loss into what it adds to the logged ``loss``."""
        by_items = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        scale = float(self._items_factor(num_items_in_batch))
        scaled_for_ga = getattr(self, "loss_is_scaled_for_ga", None)
        if not (by_items if scaled_for_ga is None else scaled_for_ga):
            scale /= self.current_gradient_accumulation_steps
        return scale

    def _record_train_step(self, model, loss, per_dim, num_items_in_batch):
        values = per_dim if per_dim is not None else loss.detach().float().reshape(1)
        bad = self._nonfinite_everywhere(values) if self.nonfinite_loss == "skip" else None
        if bad is not None and bad.any():  # the one host sync of 'skip'
            loss = self._skip_batch(model, loss, bad)
            values = torch.zeros_like(values)
        else:
            self._note_nonfinite(values)
        if per_dim is not None:
            if self._dims_window_start is None:
                self._dims_window_start = self.state.global_step
            scaled = values * self._log_scale(num_items_in_batch)
            self._train_dims = scaled if self._train_dims is None else self._train_dims + scaled
        return loss

    # ---- non-finite losses ------------------------------------------------------------------------------------
    def _note_nonfinite(self, values: torch.Tensor) -> None:
        """Remember, on the device, which dims went non-finite first and where (no host sync)."""
        bad = ~torch.isfinite(values)
        if self._nonfinite is None:
            self._nonfinite = {"step": torch.full_like(values, _NO_STEP, dtype=torch.float64),
                               "values": torch.zeros_like(values)}
        first = bad & (self._nonfinite["step"] == _NO_STEP)
        self._nonfinite["step"] = torch.where(first, float(self.state.global_step), self._nonfinite["step"])
        self._nonfinite["values"] = torch.where(first.any(), values, self._nonfinite["values"])

    def _raise_if_nonfinite(self) -> None:
        if self._nonfinite is None:
            return
        steps = self._nonfinite["step"]
        if self.accelerator.num_processes > 1:  # every process takes the same decision
            steps = -self.accelerator.reduce(-steps, reduction="max")
        bad = steps < _NO_STEP
        if not bad.any():
            return
        names = self._dim_names(len(steps)) if len(steps) > 1 else ["(total loss)"]
        which = [n for n, b in zip(names, bad.tolist()) if b]
        first = int(steps[bad].min())
        values = [round(v, 4) for v in self._nonfinite["values"].tolist()]
        raise FloatingPointError(
            f"non-finite loss at nesting dim(s) {which} in step {first} (per-dim losses there: {values}, nesting_list "
            f"{names}). Lower the learning rate, check the inputs for NaN/inf, or use fp32/bf16 instead of fp16; "
            "MRLTrainer(nonfinite_loss='skip') skips such batches. No checkpoint after that step was saved.")

    def _nonfinite_everywhere(self, values: torch.Tensor) -> torch.Tensor:
        """Which of ``values`` are non-finite on any process. Every process calls this each step, so all of them
        skip the same batches (a skip on one process alone would pair its collectives with the others' wrongly)."""
        bad = (~torch.isfinite(values)).float()
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        return bad > 0

    def _skip_batch(self, model, loss, bad):
        """A zero loss that still touches every trainable parameter (so DDP's gradient all-reduce stays in step) and
        adds no gradient; ``bad``: which values were non-finite on some process."""
        self.skipped_nonfinite_batches += 1
        names = self._dim_names(len(bad))
        which = [n for n, b in zip(names, bad.tolist()) if b]
        logger.warning(f"non-finite loss at nesting dim(s) {which} in step {self.state.global_step}; skipping this "
                       "batch's gradient (nonfinite_loss='skip'; the optimizer step still runs, so momentum and weight "
                       "decay still move the weights).")
        touched = torch.stack([p.sum() for p in model.parameters() if p.requires_grad])
        return torch.nan_to_num(touched * 0.0, 0.0, 0.0, 0.0).sum().to(loss.dtype)

    def _save_checkpoint(self, model, trial):
        self._raise_if_nonfinite()  # never write a checkpoint whose weights a non-finite loss has touched
        super()._save_checkpoint(model, trial)
        if self.args.should_save:  # on disk before training goes on: a power cut cannot lose a checkpoint it named
            folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            if folder.is_dir():
                fsync_tree(folder)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``Trainer.train``. With ``resume_from_checkpoint=True`` it resumes from the newest *complete* checkpoint in
        ``output_dir``: a ``checkpoint-N`` that a killed save left incomplete is named in a warning and renamed
        ``incomplete-checkpoint-N`` (the stock Trainer would pick it and fail; nothing is deleted). Resuming
        restores the random state before the first resumed batch is collated, so random masking
        (``DataCollatorForLanguageModeling``) resumes exactly."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = self._last_complete_checkpoint()
        resuming = resume_from_checkpoint if isinstance(resume_from_checkpoint, (str, os.PathLike)) else None
        if resuming is not None and Path(resuming).is_dir() and not has_optimizer_state(Path(resuming)):
            raise ValueError(f"{resuming} holds the weights only (saved with save_only_model=True): resuming from it "
                             "would restart the optimizer's moments and the learning-rate schedule. Load its weights "
                             "with from_pretrained and start a new run (resume_from_checkpoint=None), or save full "
                             "checkpoints.")
        self._resuming = resuming
        self._rng_replayed = False
        self._train_dims = self._dims_window_start = self._nonfinite = None  # a second train() starts its own logs
        if resuming is not None and self.args.dataloader_num_workers > 0:
            logger.warning("resuming with dataloader_num_workers > 0: a collator that draws random numbers (random "
                           "masking) draws them in the worker processes, where they are not saved, so the resumed run "
                           "masks differently from an uninterrupted one; dataloader_num_workers=0 resumes exactly.")
        try:
            output = super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._resuming = None
        self._raise_if_nonfinite()
        return output

    def _last_complete_checkpoint(self) -> str:
        folder = Path(self.args.output_dir)
        found = sorted(((int(p.name.rsplit("-", 1)[1]), p) for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                        if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()), reverse=True)
        for step, path in found:
            problem = checkpoint_problem(path, self.args.world_size, random_states=not self.args.save_only_model)
            if problem is None:
                return str(path)
            if self.args.should_save:
                aside = set_aside(path)
                logger.warning(f"skipping the incomplete checkpoint {path} ({problem}; a save that was "
                               f"interrupted); moved to {aside}, out of the Trainer's way.")
        raise ValueError(f"no complete checkpoint in {folder} to resume from (found {len(found)} checkpoint folder(s), "
                         "none complete); train from the start with resume_from_checkpoint=None.")

    # ---- random masks on resume (see mrl_hf.resumption) --------------------------------------------------------
    def get_train_dataloader(self):
        collator = self.data_collator
        self._train_collator = self.data_collator = RecordingCollator(collator)
        self._batches_trained = 0
        try:
            loader = super().get_train_dataloader()
        finally:
            self.data_collator = collator
        if self._resuming is None:
            return loader
        checkpoint, index = self._resuming, self.args.process_index
        state_file = Path(checkpoint) / COLLATOR_STATE_FILE.format(index)
        generator_file = Path(checkpoint) / GENERATOR_STATE_FILE.format(index)
        generator = torch.load(generator_file, weights_only=False) if generator_file.is_file() else None
        if state_file.is_file():  # a batch was collated ahead of that checkpoint
            state = torch.load(state_file, weights_only=False)

            def restore_after():  # the checkpoint's own states: what the run drew from next
                super(MRLTrainer, self)._load_rng_state(checkpoint)
                if generator is not None:
                    set_generator_state(generator, collator)

            self._train_collator.replay = (state, restore_after)
            self._rng_replayed = True
        elif generator is not None:  # the end of an epoch: nothing was collated ahead
            self._train_collator.start_generator = generator
        return loader

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        self._batches_trained += len(batches)
        return batches, num_items

    def _load_rng_state(self, checkpoint):
        if self._rng_replayed:  # restored already, right after the batch collated ahead was collated again
            self._rng_replayed = False
            return
        super()._load_rng_state(checkpoint)

    def _save_rng_state(self, output_dir):
        super()._save_rng_state(output_dir)
        recorder = getattr(self, "_train_collator", None)
        if recorder is not None and recorder.calls > self._batches_trained:  # a batch collated, not yet trained on
            state = recorder.state_before(self._batches_trained)
            if state is not None:
                torch.save(state, Path(output_dir) / COLLATOR_STATE_FILE.format(self.args.process_index))
        generator = generator_state(self.data_collator)  # now: after any draws of an evaluation
        if generator is not None:
            torch.save(generator, Path(output_dir) / GENERATOR_STATE_FILE.format(self.args.process_index))

    # ---- loading checkpoints ----------------------------------------------------------------------------------
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if not self._load_weights_exactly(resume_from_checkpoint, model if model is not None else self.model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_best_model(self):
        if not self._load_weights_exactly(self.state.best_model_checkpoint, self.model):
            super()._load_best_model()

    def _load_weights_exactly(self, folder, model) -> bool:
        """Load a checkpoint's weights through ``from_pretrained`` and copy them in strictly.

        The stock Trainer reads the safetensors file into ``load_state_dict(strict=False)``. transformers 5 saves some
        families under their original names (ViT's ``encoder.layer.N.attention.attention.query`` for the module
        ``layers.N.attention.q_proj``), so those weights were silently left at their fresh values on resume.
        ``from_pretrained`` applies the renaming; every key must then match. Returns False where the stock loader
        is the right one (DeepSpeed, FSDP, PEFT adapters, a folder without a full safetensors checkpoint).
        """
        from transformers import PreTrainedModel
        from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

        model = self.accelerator.unwrap_model(model)
        has_weights = any(os.path.isfile(os.path.join(folder, name))
                          for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME))
        if (self.is_deepspeed_enabled or self.is_fsdp_enabled or not has_weights
                or not isinstance(model, PreTrainedModel) or getattr(model, "_hf_peft_config_loaded", False)):
            return False
        logger.info(f"Loading model weights from {folder} (through from_pretrained, strictly).")
        loaded = type(model).from_pretrained(folder, config=copy.deepcopy(model.config), dtype=model.dtype)
        model.load_state_dict(loaded.state_dict(), strict=True)
        return True

    # ---- evaluation and logs ------------------------------------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if ignore_keys is None:
            config = getattr(self.model, "config", None)
            ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", None) or ["cache"])
        if "per_dim_losses" not in ignore_keys:  # logged as eval_loss_dim_*, not a prediction
            ignore_keys = [*ignore_keys, "per_dim_losses"]
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def evaluation_loop(self, *args, **kwargs):
        self._eval_dims, self._eval_rows = None, None
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        sums = self._eval_dims
        if sums is not None:  # gathered batch by batch: the sums over every process's rows
            for name, value in zip(self._dim_names(len(sums)), (sums / self._eval_rows).tolist()):
                output.metrics[f"{prefix}_loss_dim_{name}"] = value
        self._eval_dims, self._eval_rows = None, None
        return output

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        self._raise_if_nonfinite()
        if "loss" in logs and self._train_dims is not None:  # a training log: every process writes it
            sums = self._train_dims
            if self.accelerator.num_processes > 1:
                sums = self.accelerator.reduce(sums, reduction="mean")
            steps = max(self.state.global_step - self._dims_window_start, 1)
            for name, value in zip(self._dim_names(len(sums)), (sums / steps).tolist()):
                logs[f"loss_dim_{name}"] = value
            self._train_dims, self._dims_window_start = None, None
        super().log(logs, *args, **kwargs)


# compute_metrics helpers ---------------------------------------------------------------------------------

def nested_accuracy(nesting_list: Sequence[int], ignore_index: int = -100, prefix: str = "accuracy"):
    """A ``compute_metrics`` function giving ``{prefix}_dim_{m}`` (accuracy in [0, 1]) for every ``m``.

    Accepts what mrl_hf models put in ``EvalPrediction.predictions``: per-dim logits (a tuple of |M| arrays
    ``(N, C)``, or one array ``(N, |M|, C)``), or per-dim class ids ``(N, |M|)`` (``MRLBertForMaskedLM``'s
    ``nested_predictions``, ``(batch, seq, |M|)``), possibly inside a tuple with other outputs. Labels equal
    to ``ignore_index`` are skipped.
    """
    dims = validate_nesting_list(nesting_list)

    def compute_metrics(eval_pred) -> dict[str, float]:
        per_dim = _per_dim_class_ids(eval_pred.predictions, len(dims))
        labels = np.asarray(eval_pred.label_ids).reshape(-1)
        if labels.size != per_dim[0].size:
            labels = labels[labels != ignore_index]
        if labels.size != per_dim[0].size:
            raise ValueError(f"got {per_dim[0].size} predictions per dim but {labels.size} labels; "
                             "the predictions must be one per labelled position.")
        keep = labels != ignore_index
        total = max(int(keep.sum()), 1)
        return {f"{prefix}_dim_{m}": float((pred[keep] == labels[keep]).sum()) / total
                for m, pred in zip(dims, per_dim)}

    return compute_metrics


def _per_dim_class_ids(predictions, num_dims: int) -> list[np.ndarray]:
    candidates = list(predictions) if isinstance(predictions, (tuple, list)) else [predictions]
    arrays = [c for c in candidates if not isinstance(c, (tuple, list))]
    if len(arrays) == len(candidates) == num_dims > 1 and len({np.shape(c) for c in arrays}) == 1:
        candidates = [tuple(candidates)]  # predictions itself is the tuple of per-dim logits
    for c in candidates:
        if isinstance(c, (tuple, list)) and len(c) == num_dims:
            return [np.asarray(x).argmax(-1).reshape(-1) for x in c]
        c = np.asarray(c)
        if c.ndim >= 2 and c.shape[-1] == num_dims and np.issubdtype(c.dtype, np.integer):
            return [c[..., i].reshape(-1) for i in range(num_dims)]
        if c.ndim == 3 and c.shape[1] == num_dims:
            return [c[:, i].argmax(-1) for i in range(num_dims)]
    raise ValueError(
        f"could not find per-dim predictions for {num_dims} nesting sizes in predictions of shapes "
        f"{[np.shape(c) if not isinstance(c, (tuple, list)) else len(c) for c in candidates]}; expected a tuple of "
        f"{num_dims} logit arrays, an (N, {num_dims}, C) array or (N, {num_dims}) class ids."
    )
