"""Unsupervised Matryoshka self-distillation: teach every prefix to reproduce a frozen teacher's similarities.

A pretrained encoder (the teacher) already knows which texts are alike; slicing its embedding loses that at low
dims. Instead of labels, the student (a copy of the encoder, or an adaptor on its frozen outputs) is trained so
that at every nesting dim ``m`` the cosine similarities of its ``m``-prefixes match the teacher's full-dim
cosine similarities, as Matryoshka-Adaptor (Yoon et al., EMNLP 2024) does:

* pairwise: ``mean_{i != j} |S_m[i, j] - T[i, j]|`` over the batch (global structure);
* top-k: the same distance on each row's ``top_k`` teacher neighbours only (local structure, what retrieval uses);
* listwise: ``KL(softmax(T[i] / tau) || softmax(S_m[i] / tau))``, the neighbour ranking per row. Not in the
  paper; on held-out retrieval it helped most at the smallest dims (docs/matryoshkafy.md).

``S_m`` uses prefixes normalised on their own, ``T`` the teacher's full embeddings; student and teacher sizes may
differ. Pairs with labels can add ``nested_contrastive_loss`` on top (``contrastive_weight``).
"""
from __future__ import annotations

import copy
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .losses import NestedLoss, nested_contrastive_loss, nested_cosine_similarities, weighted_sum
from .modeling.gather import all_gather_with_grad
from .modeling.text_common import default_max_length
from .nesting import validate_nesting_list, validate_relative_importance
from .quantization import (
    add_quantized_terms,
    check_quantization_options,
    quantized_similarities,
    resolve_precisions,
)
from .trainer import MRLTrainer


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    for name, x in (("student", student), ("teacher", teacher)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape (batch, dim), got {type(x).__name__}.")
        if x.dim() != 2:
            raise ValueError(f"{name} must have shape (batch, dim), got {tuple(x.shape)}.")
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(f"student has {student.shape[0]} rows but teacher has {teacher.shape[0]}; "
                         "give the teacher embedding of each student row, in the same order.")
    if student.shape[0] < 2:
        raise ValueError(f"the batch has {student.shape[0]} row(s); similarity distillation needs at least 2.")


def teacher_similarities(teacher: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarities of the teacher's full embeddings, ``(N, N)``, without gradient; in float32 at least
    (a half-precision teacher is promoted, a float64 one keeps its precision)."""
    with torch.no_grad():
        t = F.normalize(teacher.to(torch.promote_types(teacher.dtype, torch.float32)), dim=-1, eps=eps)
        return t @ t.T


def _check_terms(pairwise_weight, topk_weight, top_k, listwise_weight, listwise_temperature) -> None:
    for name, w in (("pairwise_weight", pairwise_weight), ("topk_weight", topk_weight),
                    ("listwise_weight", listwise_weight)):
        if not w >= 0:
            raise ValueError(f"{name}={w} must be >= 0.")
    if pairwise_weight == topk_weight == listwise_weight == 0:
        raise ValueError("pairwise_weight, topk_weight and listwise_weight are all 0; set at least one > 0.")
    if not listwise_temperature > 0:
        raise ValueError(f"listwise_temperature={listwise_temperature} must be > 0.")
    if topk_weight and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be an int >= 1.")


def similarity_distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    nesting_list: Sequence[int],
    relative_importance: Sequence[float] | None = None,
    pairwise_weight: float = 1.0,
    topk_weight: float = 1.0,
    top_k: int = 10,
    listwise_weight: float = 1.0,
    listwise_temperature: float = 0.05,
    precisions=None,
    quantization_weight: float = 1.0,
    binary_surrogate: str = "ste",
) -> NestedLoss:
    """Per-dim similarity matching between the student's prefixes and the teacher (see the module docstring).

    ``student`` ``(N, d)`` with ``nesting_list[-1] == d``; ``teacher`` ``(N, D)`` (no gradient flows into it).
    Returns ``NestedLoss(sum_m c_m * L_m, per_dim_losses)`` where ``L_m`` is the weighted sum of the terms.

    Quantisation-aware (``mrl_hf.quantization``): ``precisions`` (``["float32", "binary"]`` or ``{"binary": [sizes]}``)
    adds to ``L_m``, at each listed size, ``quantization_weight`` times the same terms computed on the similarities of
    the student's prefixes as they will be quantised (the teacher stays float). ``None`` is the float-only loss.
    """
    _check_pair(student, teacher)
    dims = validate_nesting_list(nesting_list, dim=student.shape[1])
    coefs = validate_relative_importance(relative_importance, len(dims))
    _check_terms(pairwise_weight, topk_weight, top_k, listwise_weight, listwise_temperature)
    target = teacher_similarities(teacher).to(student.dtype)

    def terms(sims: torch.Tensor) -> torch.Tensor:  # (|sizes|, N, N) student similarities -> one loss per size
        num, n = sims.shape[0], sims.shape[1]
        off_diag = ~torch.eye(n, dtype=torch.bool, device=student.device)
        gap = (sims - target).abs()
        per_dim = torch.zeros(num, dtype=student.dtype, device=student.device)
        if pairwise_weight:
            per_dim = per_dim + pairwise_weight * gap.masked_fill(~off_diag, 0).sum((1, 2)) / (n * (n - 1))
        if topk_weight:
            k = min(top_k, n - 1)
            neighbours = target.masked_fill(~off_diag, float("-inf")).topk(k, dim=1).indices  # (N, k)
            per_dim = per_dim + topk_weight * gap.gather(2, neighbours.expand(num, n, k)).mean((1, 2))
        if listwise_weight:
            mask = torch.full_like(target, float("-inf")).masked_fill(off_diag, 0.0)
            p_teacher = F.softmax(target / listwise_temperature + mask, dim=1)
            log_p_student = F.log_softmax(sims / listwise_temperature + mask, dim=2)
            kl = (p_teacher * (torch.log(p_teacher.clamp_min(1e-12)) - log_p_student)).masked_fill(~off_diag, 0)
            per_dim = per_dim + listwise_weight * kl.sum(2).mean(1)
        return per_dim

    per_dim = terms(nested_cosine_similarities(student, student, dims))  # (|M|, N, N)
    per_dim = add_quantized_terms(
        per_dim, dims, precisions, quantization_weight,
        lambda precision, sizes: terms(quantized_similarities(student, student, sizes, precision, binary_surrogate)))
    return NestedLoss(weighted_sum(per_dim, coefs), per_dim.detach())


class MatryoshkaDistillationLoss(nn.Module):
    """Module form of ``similarity_distillation_loss``, optionally mixed with a supervised nested InfoNCE.

    ``forward(student, teacher, positives=None)``: when ``positives`` (the student embeddings of each row's
    positive) are given and ``contrastive_weight > 0``, adds ``contrastive_weight * nested_contrastive_loss``.
    ``precisions`` / ``quantization_weight`` / ``binary_surrogate`` make both terms quantisation-aware (see
    ``similarity_distillation_loss``); pass ``config.matryoshka_precisions`` to train what the model's config lists.
    """

    def __init__(self, nesting_list: Sequence[int], relative_importance: Sequence[float] | None = None,
                 pairwise_weight: float = 1.0, topk_weight: float = 1.0, top_k: int = 10,
                 listwise_weight: float = 1.0, listwise_temperature: float = 0.05,
                 contrastive_weight: float = 0.0, temperature: float = 0.05, precisions=None,
                 quantization_weight: float = 1.0, binary_surrogate: str = "ste"):
        super().__init__()
        self.nesting_list = validate_nesting_list(nesting_list)
        self.relative_importance = (None if relative_importance is None
                                    else validate_relative_importance(relative_importance, len(self.nesting_list)))
        if not contrastive_weight >= 0:
            raise ValueError(f"contrastive_weight={contrastive_weight} must be >= 0.")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature} must be > 0.")
        _check_terms(pairwise_weight, topk_weight, top_k, listwise_weight, listwise_temperature)  # now, not at step 1
        self.pairwise_weight, self.topk_weight, self.top_k = pairwise_weight, topk_weight, top_k
        self.listwise_weight, self.listwise_temperature = listwise_weight, listwise_temperature
        self.contrastive_weight, self.temperature = contrastive_weight, temperature
        self.precisions = resolve_precisions(precisions, self.nesting_list)  # raises on an unknown precision
        self.quantization_weight, self.binary_surrogate = check_quantization_options(quantization_weight,
                                                                                     binary_surrogate)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor,
                positives: torch.Tensor | None = None) -> NestedLoss:
        out = similarity_distillation_loss(
            student, teacher, self.nesting_list, self.relative_importance, self.pairwise_weight,
            self.topk_weight, self.top_k, self.listwise_weight, self.listwise_temperature, self.precisions,
            self.quantization_weight, self.binary_surrogate)
        if positives is None or not self.contrastive_weight:
            return out
        sup = nested_contrastive_loss(student, positives, self.nesting_list, self.temperature,
                                      self.relative_importance, precisions=self.precisions,
                                      quantization_weight=self.quantization_weight,
                                      binary_surrogate=self.binary_surrogate)
        return NestedLoss(out.loss + self.contrastive_weight * sup.loss,
                          out.per_dim_losses + self.contrastive_weight * sup.per_dim_losses)


# ---- self-distilling a full encoder through MRLTrainer --------------------------------------------------

TEACHER_COLUMN = "teacher_embedding"


def add_teacher_embeddings(dataset, teacher, text_column: str = "text", batch_size: int = 64,
                           column: str = TEACHER_COLUMN):
    """Encode ``dataset[text_column]`` once with the frozen ``teacher`` and return the dataset with the vectors
    in ``column``, so training steps never run the teacher. ``teacher`` is anything with
    ``encode(list_of_texts, batch_size=...)`` returning ``(N, D)`` (a ``SentenceTransformer``, an
    ``MRLBertModel``: at its full size, whatever its ``truncate_dim``), or a precomputed array with one row per
    example.

    The texts are embedded as they are, as ``DistillationCollator`` gives them to the student: a teacher's default
    prompt is not put before them (``encode(..., prompt="")``). To distil an e5-style model on prompted inputs, put
    the prompt into the texts, e.g. ``[model.config.prompts["query"] + text for text in texts]``.
    """
    import inspect

    import numpy as np

    if text_column not in dataset.column_names:
        raise ValueError(f"dataset has no column {text_column!r} (columns: {dataset.column_names}); "
                         "pass text_column=<the column holding the texts>.")
    if len(dataset) == 0:
        raise ValueError("dataset is empty; self-distillation needs unlabelled texts.")
    if hasattr(teacher, "encode"):
        full = getattr(getattr(teacher, "config", None), "matryoshka_embedding_dim", None)
        size = {} if full is None else {"truncate_dim": full}  # an mrl_hf teacher at its full size, not its default
        try:
            takes_prompt = "prompt" in inspect.signature(teacher.encode).parameters
        except (TypeError, ValueError):
            takes_prompt = False
        bare = {"prompt": ""} if takes_prompt else {}  # the student sees the texts without a prompt
        vectors = teacher.encode(list(dataset[text_column]), batch_size=batch_size, **size, **bare)
    else:
        vectors = teacher
    if isinstance(vectors, torch.Tensor):  # bfloat16 (numpy has none) or a tensor that requires grad
        vectors = vectors.detach().float().cpu().numpy()
    vectors = np.asarray(vectors.cpu() if hasattr(vectors, "cpu") else vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(dataset):
        raise ValueError(f"teacher embeddings have shape {vectors.shape}; expected ({len(dataset)}, dim).")
    if not np.isfinite(vectors).all():
        raise ValueError("teacher embeddings contain NaN or inf; check the teacher model and the texts.")
    if column in dataset.column_names:
        dataset = dataset.remove_columns(column)
    return dataset.add_column(column, list(vectors))


class DistillationCollator:
    """Tokenize the text column and stack the teacher vectors (``add_teacher_embeddings``) into a batch.

    With ``positive_column`` (optional labelled pairs), also tokenizes each row's positive text as
    ``positive_input_ids`` / ``positive_attention_mask`` for the supervised contrastive term. Texts are tokenized as
    they are (no prompt is added) and cut at ``max_length`` tokens. By default that is what the student's ``encode``
    reads (256 for a sentence-transformers MiniLM; ``MatryoshkaDistillationTrainer`` sets it from the model: the
    tokenizer's ``model_max_length`` capped at the backbone's positions), so that a teacher that encoded the same texts
    saw the same tokens; pass the teacher's length where it reads fewer.
    """

    def __init__(self, tokenizer, text_column: str = "text", teacher_column: str = TEACHER_COLUMN,
                 positive_column: str | None = None, max_length: int | None = None):
        self.tokenizer, self.text_column, self.teacher_column = tokenizer, text_column, teacher_column
        self.positive_column, self.max_length = positive_column, max_length

    def _length(self) -> int:
        if self.max_length is not None:
            return self.max_length
        return default_max_length(self.tokenizer, None)  # outside the trainer, which knows the model's positions

    def __call__(self, features) -> dict:
        if len(features) < 2:
            raise ValueError(f"a batch of {len(features)} row(s); similarity distillation needs at least 2 "
                             "(use a larger per_device_train_batch_size / per_device_eval_batch_size, e.g. 64, and, "
                             "when the dataset's size leaves one row over, "
                             "TrainingArguments(dataloader_drop_last=True)).")
        for key in (self.text_column, self.teacher_column):
            if key not in features[0]:
                raise ValueError(f"the rows have no {key!r} (keys: {sorted(features[0])}); "
                                 "add teacher vectors with add_teacher_embeddings(dataset, teacher).")
        enc = self.tokenizer([f[self.text_column] for f in features], padding=True, truncation=True,
                             max_length=self._length(), return_tensors="pt", return_token_type_ids=False,
                             padding_side="right")  # as encode pads: BERT counts left pads as positions
        batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                 "teacher_embeddings": torch.as_tensor([f[self.teacher_column] for f in features],
                                                       dtype=torch.float32)}
        if self.positive_column is not None:
            pos = self.tokenizer([f[self.positive_column] for f in features], padding=True, truncation=True,
                                 max_length=self._length(), return_tensors="pt", return_token_type_ids=False,
                                 padding_side="right")  # as encode pads: BERT counts left pads as positions
            batch["positive_input_ids"], batch["positive_attention_mask"] = pos["input_ids"], pos["attention_mask"]
        return batch


class MatryoshkaDistillationTrainer(MRLTrainer):
    """``MRLTrainer`` whose loss is ``MatryoshkaDistillationLoss`` between the model's embeddings and the
    precomputed teacher vectors in each batch (``DistillationCollator``); logs ``loss_dim_{m}`` as usual.

    ``distillation_loss`` defaults to the pairwise + top-k + listwise loss on ``model.config.nesting_list``, made
    quantisation-aware for the (size, precision) pairs of ``model.config.matryoshka_precisions``.
    """

    def __init__(self, *args, distillation_loss: MatryoshkaDistillationLoss | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        config = self.accelerator.unwrap_model(self.model).config
        self.distillation_loss = distillation_loss or MatryoshkaDistillationLoss(
            config.nesting_list, config.relative_importance,
            precisions=getattr(config, "matryoshka_precisions", None),  # the codes the config says it is trained for
            quantization_weight=getattr(config, "quantization_weight", 1.0),
            binary_surrogate=getattr(config, "binary_surrogate", "ste"))
        if list(self.distillation_loss.nesting_list) != list(config.nesting_list):
            raise ValueError(f"distillation_loss.nesting_list={self.distillation_loss.nesting_list} differs "
                             f"from the model's nesting_list={config.nesting_list}; build the loss from it.")
        self.args.remove_unused_columns = False  # the collator needs the text and teacher columns
        if isinstance(self.data_collator, DistillationCollator) and self.data_collator.max_length is None:
            # as the student's encode reads (its positions may be fewer than the tokenizer states); on a copy, so
            # that a collator shared with another student keeps its own default
            self.data_collator = copy.copy(self.data_collator)
            self.data_collator.max_length = default_max_length(self.data_collator.tokenizer, config)
        self._warn_if_texts_lack_prompts(config)
        self._check_last_batch(self.train_dataset, "training", "per_device_train_batch_size")
        evals = self.eval_dataset if isinstance(self.eval_dataset, dict) else {"": self.eval_dataset}
        for name, dataset in evals.items():  # before training: with eval_strategy="epoch" it failed after one
            self._check_last_batch(dataset, f"evaluation{f' ({name!r})' if name else ''}",
                                   "per_device_eval_batch_size")

    def _warn_if_texts_lack_prompts(self, config) -> None:
        """An e5-style student serves ``prompt + text`` (``encode_query`` / ``encode_document``), and
        ``DistillationCollator`` adds no prompt: training on bare texts trains inputs the model is never given."""
        prompts = tuple(p for p in (getattr(config, "prompts", None) or {}).values() if p)
        collator = self.data_collator
        if not prompts or not isinstance(collator, DistillationCollator) or self.train_dataset is None:
            return
        try:
            texts = [self.train_dataset[i][collator.text_column] for i in range(min(8, len(self.train_dataset)))]
        except (KeyError, TypeError, IndexError):  # an iterable dataset or other columns: the collator will say
            return
        if texts and not any(isinstance(t, str) and t.startswith(prompts) for t in texts):
            warnings.warn(f"the model has prompts {config.prompts}, but the first training texts start with none of "
                          "them: DistillationCollator (and add_teacher_embeddings) take the texts as they are, while "
                          "encode_query / encode_document put the prompts before them. Put the prompt you serve with "
                          "into the texts, e.g. [model.config.prompts['query'] + t for t in texts].", stacklevel=3)

    def _check_last_batch(self, dataset, what: str, batch_setting: str) -> None:
        rows = len(dataset) if hasattr(dataset, "__len__") else None
        batch = getattr(self.args, batch_setting)
        if rows and self.args.world_size == 1 and not self.args.dataloader_drop_last and rows % batch == 1:
            raise ValueError(f"{rows} {what} rows in batches of {batch} leave a last batch of one row, which has no "
                             f"similarities to distill (the run would fail there); set "
                             f"TrainingArguments(dataloader_drop_last=True) or change {batch_setting}.")

    def get_eval_dataloader(self, eval_dataset=None):
        dataset = self.eval_dataset[eval_dataset] if isinstance(eval_dataset, str) else (
            eval_dataset if eval_dataset is not None else self.eval_dataset)
        self._check_last_batch(dataset, "evaluation", "per_device_eval_batch_size")
        return super().get_eval_dataloader(eval_dataset)

    def compute_nested_loss(self, model, inputs, num_items_in_batch=None):
        inputs = dict(inputs)
        if "teacher_embeddings" not in inputs:
            raise ValueError("the batch has no 'teacher_embeddings'; use DistillationCollator on a dataset "
                             "prepared with add_teacher_embeddings.")
        teacher = inputs.pop("teacher_embeddings")
        pos_ids, pos_mask = inputs.pop("positive_input_ids", None), inputs.pop("positive_attention_mask", None)
        outputs = model(**inputs, return_loss=False)
        student = outputs.embeddings
        positives = None if pos_ids is None else model(pos_ids, pos_mask, return_loss=False).embeddings
        config = self.accelerator.unwrap_model(model).config
        if getattr(config, "gather_across_processes", True) and self.accelerator.num_processes > 1:
            # the similarities of the global batch, as one process would see it (see mrl_hf.distributed)
            student, teacher = all_gather_with_grad(student), all_gather_with_grad(teacher.detach())
            positives = None if positives is None else all_gather_with_grad(positives)
        nested = self.distillation_loss(student, teacher, positives)
        outputs.loss, outputs.per_dim_losses = nested.loss, nested.per_dim_losses
        return nested.loss, outputs
