"""MRLTrainer: a ``transformers.Trainer`` that logs the loss at every nesting size, plus per-size metrics.

Works with any model whose outputs carry ``per_dim_losses`` (shape ``(|M|,)``) and whose config has
``nesting_list``: training logs get ``loss_dim_{m}`` (mean over the steps since the last log, across gradient
accumulation micro-batches), evaluation metrics get ``eval_loss_dim_{m}``.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
from transformers import Trainer
from transformers.utils import logging

from .nesting import validate_nesting_list

logger = logging.get_logger(__name__)


class _Mean:
    """Running mean of per-dim loss vectors."""

    def __init__(self):
        self.sum, self.count = None, 0

    def add(self, values: torch.Tensor) -> None:
        values = values.detach().float().cpu()
        self.sum = values if self.sum is None else self.sum + values
        self.count += 1

    def pop(self) -> list[float] | None:
        if not self.count:
            return None
        mean = (self.sum / self.count).tolist()
        self.sum, self.count = None, 0
        return mean


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


class MRLTrainer(Trainer):
    """``Trainer`` with per-nesting-size loss logging. Everything else (``DataCollatorForLanguageModeling``,
    gradient accumulation, ``evaluate()``, ``save_model()``, ``resume_from_checkpoint``) is the stock Trainer.

    With ``mrl_hf.data.PairCollator`` (raw text pairs tokenized per batch) the dataset columns must reach the
    collator, so ``remove_unused_columns`` is switched off for you.
    """

    NONFINITE_ACTIONS = ("raise", "skip")

    def __init__(self, *args, nonfinite_loss: str = "raise", **kwargs):
        if nonfinite_loss not in self.NONFINITE_ACTIONS:
            raise ValueError(f"nonfinite_loss={nonfinite_loss!r}; choose 'raise' (stop with an error naming the "
                             "nesting dim) or 'skip' (drop that batch's gradient and go on).")
        self.nonfinite_loss = nonfinite_loss
        self.skipped_nonfinite_batches = 0
        super().__init__(*args, **kwargs)
        from .data.collator import PairCollator

        if isinstance(self.data_collator, PairCollator) and self.args.remove_unused_columns:
            self.args.remove_unused_columns = False
        self._train_dims = _Mean()
        self._eval_dims = _Mean()
        _check_launched_world_size(self.args)
        fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
        if fsdp_asked and self.args.use_cpu and not self.is_fsdp_enabled and self.is_world_process_zero():
            logger.warning("accelerate launch asked for FSDP, but this Trainer runs without it: with use_cpu=True (a "
                           "machine without a GPU) transformers does not enable FSDP, and the processes train with DDP.")

    def _dim_names(self, count: int) -> list[str]:
        config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
        dims = getattr(config, "nesting_list", None)
        if dims is not None and len(dims) == count:
            return [str(m) for m in dims]
        return [f"index{i}" for i in range(count)]  # a model whose losses are not one per nesting_list entry

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        per_dim = outputs.get("per_dim_losses") if isinstance(outputs, dict) else None
        if model.training:
            loss = self._check_finite(model, loss, per_dim)
        if per_dim is not None and torch.isfinite(per_dim).all():
            (self._train_dims if model.training else self._eval_dims).add(per_dim)
        return (loss, outputs) if return_outputs else loss

    def _check_finite(self, model, loss, per_dim):
        """NaN/inf guard: raise naming the nesting dim(s) that went bad, or (``nonfinite_loss='skip'``) replace
        the batch's loss by a zero that still touches every parameter, so DDP's gradient all-reduce stays in step
        and the batch adds no gradient. All processes take the same decision."""
        values = per_dim.detach().float() if per_dim is not None else loss.detach().float().reshape(1)
        bad = (~torch.isfinite(values)).float()
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.reduce(bad, reduction="sum")
        if not bad.any():
            return loss
        names = self._dim_names(len(values)) if per_dim is not None else ["(total loss)"]
        which = [n for n, b in zip(names, bad.tolist()) if b]
        message = (f"non-finite loss at nesting dim(s) {which} in step {self.state.global_step} "
                   f"(this process's per-dim losses: {[round(v, 4) for v in values.tolist()]}, nesting_list "
                   f"{names}). Lower the learning rate, check the inputs for NaN/inf, or use fp32/bf16 instead of fp16")
        if self.nonfinite_loss == "raise":
            raise FloatingPointError(message + "; MRLTrainer(nonfinite_loss='skip') skips such batches.")
        self.skipped_nonfinite_batches += 1
        logger.warning(message + "; skipping this batch (nonfinite_loss='skip').")
        zero = sum(torch.nan_to_num(p * 0, 0.0, 0.0, 0.0).sum() for p in model.parameters() if p.requires_grad)
        return zero.to(loss.dtype) if torch.is_tensor(zero) else loss.detach() * 0

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if ignore_keys is None:
            config = getattr(self.model, "config", None)
            ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", None) or ["cache"])
        if "per_dim_losses" not in ignore_keys:  # logged as eval_loss_dim_*, not a prediction
            ignore_keys = [*ignore_keys, "per_dim_losses"]
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    def evaluation_loop(self, *args, **kwargs):
        self._eval_dims = _Mean()
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        means = self._eval_dims.pop()
        if means is not None:
            for name, value in zip(self._dim_names(len(means)), means):
                output.metrics[f"{prefix}_loss_dim_{name}"] = value
        return output

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            means = self._train_dims.pop()
            if means is not None:
                for name, value in zip(self._dim_names(len(means)), means):
                    logs[f"loss_dim_{name}"] = round(value, 4)
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
