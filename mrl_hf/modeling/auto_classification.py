"""Matryoshka classifiers on any ``transformers`` backbone: the shared head and loss, and
``MRLModelForSequenceClassification`` (text).

A classifier pools the backbone's output into one vector, optionally projects it to ``embedding_dim`` and puts a
``MatryoshkaHead`` on it: MRL (one linear classifier per nesting size, ``efficient=False``) or MRL-E (one shared
weight whose first ``m`` columns classify from the first ``m`` features, ``efficient=True``). The loss is the paper's
nested cross-entropy ``sum_m c_m * CE(logits_m, labels)`` (``MatryoshkaCrossEntropyLoss``), with label smoothing and
the Trainer's ``num_items_in_batch``, exactly as for ``MRLResNetForImageClassification`` (``modeling/vision.py``).

``MRLModelForSequenceClassification`` uses the text backbone, pooling and plain-checkpoint loading of
``MRLModelForTextEmbedding`` (``modeling/auto_text.py``): ``from_pretrained(<BertModel / Qwen3Model /
BertForSequenceClassification folder>, num_labels=..., pooling=...)`` loads the backbone quietly; the plain model's
own classifier (``classifier.*``, ``score.*``) is dropped, the projection and the Matryoshka head are new.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..embeddings import truncate_embeddings
from ..heads import MatryoshkaHead, refuse_precisions
from ..losses import MatryoshkaCrossEntropyLoss
from ..nesting import validate_dim
from .auto_text import (
    MRLTextEmbeddingConfig,
    MRLTextEmbeddingPreTrainedModel,
    build_backbone,
    pool,
)
from .text_common import check_nonempty

# ---- what every Matryoshka classifier shares ----------------------------------------------------------------------


def build_head(config) -> MatryoshkaHead:
    """The MRL (``config.efficient=False``) or MRL-E head for ``config.num_labels`` classes; checks that
    ``config.truncate_dim`` has logits (an MRL head has classifiers at the nesting sizes only)."""
    if isinstance(config.num_labels, bool) or config.num_labels < 1:
        raise ValueError(f"num_labels={config.num_labels} must be >= 1; pass num_labels=<number of classes>.")
    if getattr(config, "problem_type", None) not in (None, "single_label_classification"):
        raise ValueError(f"problem_type={config.problem_type!r} is not supported: the Matryoshka classifiers are "
                         "trained with the nested cross-entropy over class ids; use problem_type=None.")
    refuse_precisions(config)
    head = MatryoshkaHead(config.nesting_list, config.num_labels, efficient=config.efficient)
    check_logits_dim(config.truncate_dim, config, name="config.truncate_dim")
    return head


def check_logits_dim(dim, config, name: str = "truncate_dim") -> None:
    """``dim`` (None: the full size) must be a size the head has logits for: any size for MRL-E, a nesting size for
    MRL."""
    if dim is None:
        return
    validate_dim(dim, config.nesting_list[-1], name=name)
    if not config.efficient and dim not in config.nesting_list:
        raise ValueError(f"{name}={dim} has no classifier in this MRL head; choose one of {config.nesting_list} (or "
                         "build the model with efficient=True, whose shared weight classifies at any size).")


def check_labels(labels, batch: int, num_labels: int, device: torch.device) -> torch.Tensor:
    """``labels`` as a flat long tensor of one class id per example (-100: ignored)."""
    labels = torch.as_tensor(labels, device=device)
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}; convert them with "
                        "labels.long() (regression and multi-label targets are not supported).")
    labels = labels.reshape(-1).long()
    if labels.numel() != batch:
        raise ValueError(f"got {labels.numel()} labels for {batch} examples; give one class id per example.")
    if labels.device.type != "cpu":  # no host sync on an accelerator: its cross-entropy kernel asserts instead
        return labels
    bad = labels[(labels != -100) & ((labels < 0) | (labels >= num_labels))]
    if bad.numel():
        raise ValueError(f"label {bad[0].item()} is outside 0..{num_labels - 1} (config.num_labels={num_labels}); "
                         "fix the labels or build the model with a larger num_labels.")
    return labels


def classify(head: MatryoshkaHead, config, embeddings, labels=None, truncate_dim=None, smoothing: float = 0.0,
             num_items_in_batch=None):
    """``(loss, per_dim_losses, logits, nested_logits)`` of ``head`` on ``embeddings`` ``(batch, d)``.

    ``nested_logits[i]`` are the logits at ``config.nesting_list[i]``; ``logits`` those at ``truncate_dim`` (default
    ``config.truncate_dim``; None: the full size). With ``labels``: the nested cross-entropy over ``nested_logits``,
    weighted by ``config.relative_importance``, label-smoothed by ``smoothing`` and divided by ``num_items_in_batch``
    when given (the Trainer's count of labelled examples over gradient accumulation and processes)."""
    dim = truncate_dim if truncate_dim is not None else config.truncate_dim
    nested_logits = head(embeddings)
    if dim is None or dim in config.nesting_list:
        logits = nested_logits[config.nesting_list.index(dim) if dim is not None else -1]
    else:  # MRL-E between two nesting sizes
        logits = head(embeddings, dim=dim)
    loss = per_dim = None
    if labels is not None:
        labels = check_labels(labels, embeddings.shape[0], config.num_labels, embeddings.device)
        loss_fct = MatryoshkaCrossEntropyLoss(config.relative_importance, label_smoothing=smoothing)
        loss, per_dim = loss_fct(nested_logits, labels, num_items_in_batch=num_items_in_batch)[:2]
    return loss, per_dim, logits, nested_logits


def config_with_labels(config_class, backbone_config, settings: dict):
    """A classifier's config around a plain checkpoint's: the class labels of ``settings`` (``num_labels`` /
    ``id2label`` / ``label2id``), else the checkpoint's own."""
    settings = dict(settings)
    labels = {k: settings.pop(k) for k in ("num_labels", "id2label", "label2id") if k in settings}
    config = config_class(backbone_config=backbone_config, **settings)
    if "id2label" in labels:
        config.id2label = labels["id2label"]
    elif "num_labels" in labels:
        config.num_labels = labels["num_labels"]
    else:
        config.id2label = dict(backbone_config.id2label)
    config.label2id = labels.get("label2id") or {name: i for i, name in config.id2label.items()}
    return config


def init_classifier_weights(module: nn.Module, std: float) -> None:
    """A new projection or MRL classifier: normal(0, std) weights and zero bias, as transformers initialises heads.
    (The shared MRL-E weight is initialised by ``MatryoshkaPreTrainedMixin``.)"""
    init.normal_(module.weight, mean=0.0, std=std)
    if module.bias is not None:
        init.zeros_(module.bias)


# ---- text -----------------------------------------------------------------------------------------------------------


@strict
class MRLTextClassificationConfig(MRLTextEmbeddingConfig):
    """``MRLTextEmbeddingConfig`` (backbone_config, pooling, embedding_dim, Matryoshka fields) for
    ``MRLModelForSequenceClassification``, plus the class labels (``num_labels`` / ``id2label``). ``efficient``
    chooses MRL-E; ``truncate_dim`` the size whose logits are ``output.logits``. Its own model type, so that the
    Trainer's evaluation loop collects ``(logits, nested_logits)`` as predictions (not the embeddings too)."""

    model_type = "mrl_text_classification"
    keys_to_ignore_at_inference = ["per_dim_losses", "embeddings", "last_hidden_state", "hidden_states", "attentions"]


@dataclass
class MatryoshkaSequenceClassifierOutput(ModelOutput):
    """``logits``: the logits at ``truncate_dim`` (default: the full size); ``nested_logits[i]`` those at
    ``config.nesting_list[i]``; ``per_dim_losses[i]`` the unweighted loss there (detached, for logging);
    ``embeddings`` the pooled (projected) vector before any truncation. The fields of
    ``MatryoshkaImageClassifierOutput`` plus ``attentions``."""

    loss: torch.FloatTensor | None = None
    per_dim_losses: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    nested_logits: tuple[torch.FloatTensor, ...] | None = None
    embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class MRLModelForSequenceClassification(MRLTextEmbeddingPreTrainedModel):
    """Text classification with a Matryoshka head on any ``AutoModel`` text backbone.

    The backbone's last hidden states are pooled (``config.pooling``: ``"mean"``, ``"cls"``, or ``"last_token"`` for
    decoders such as Qwen3 / Llama), optionally projected to ``embedding_dim``, and classified at every nesting size.
    ``forward(input_ids, attention_mask, labels=...)`` returns ``MatryoshkaSequenceClassifierOutput`` with the nested
    cross-entropy; ``MRLTrainer`` trains it (``label_smoothing_factor`` smooths every size) and logs ``loss_dim_{m}``.
    ``logits_at(..., dim=m)`` classifies from the first ``m`` features only.
    """

    config_class = MRLTextClassificationConfig
    config: MRLTextClassificationConfig
    # The pooler and the task head of a plain BertForSequenceClassification / Qwen3ForSequenceClassification.
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)pooler\.", r"^classifier\.", r"^score\."]
    # forward takes num_items_in_batch: the nested cross-entropy is a sum over labelled examples divided by it.
    accepts_loss_kwargs = True

    def __init__(self, config: MRLTextClassificationConfig):
        super().__init__(config)
        config.validate_matryoshka()
        self.backbone = build_backbone(config.backbone_config)
        hidden = config.backbone_hidden_size
        self.projection = nn.Linear(hidden, config.embedding_dim) if config.embedding_dim is not None else None
        self.head = build_head(config)
        self.tokenizer = None
        forward_args = inspect.signature(self.backbone.forward).parameters
        if "input_ids" not in forward_args:
            raise ValueError(f"{type(self.backbone).__name__} takes no input_ids: it is not a text model; for images "
                             "use MRLModelForImageClassification.")
        self._backbone_takes = {name for name in ("token_type_ids", "use_cache") if name in forward_args}
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self.projection or (isinstance(module, nn.Linear) and module in getattr(self.head, "classifiers",
                                                                                               ())):
            init_classifier_weights(module, getattr(self.config.get_text_config(), "initializer_range", None) or 0.02)

    _plain_settings = MRLTextEmbeddingPreTrainedModel._plain_settings | {"num_labels", "id2label", "label2id"}

    @classmethod
    def _config_for_plain(cls, backbone_config, settings):
        """Without ``num_labels`` / ``id2label`` the new head takes the plain checkpoint's own labels (a fine-tuned
        ``BertForSequenceClassification`` keeps its label names)."""
        return config_with_labels(cls.config_class, backbone_config, settings)

    def _save_extra_files(self, save_directory):
        """The tokenizer (if any) next to the weights; not the sentence-transformers files of the embedding model."""
        if getattr(self, "tokenizer", None) is not None:
            self.tokenizer.save_pretrained(os.fspath(save_directory))

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.set_input_embeddings(value)

    def _embed(self, input_ids, attention_mask=None, token_type_ids=None, inputs_embeds=None, **kwargs):
        check_nonempty(input_ids if input_ids is not None else inputs_embeds)
        if attention_mask is None:  # every position counts
            like = input_ids if input_ids is not None else inputs_embeds[..., 0]
            attention_mask = torch.ones(like.shape, dtype=torch.long, device=like.device)
        kwargs.pop("return_dict", None)  # the backbone's output is read by name below
        if token_type_ids is not None and "token_type_ids" in self._backbone_takes:
            kwargs["token_type_ids"] = token_type_ids  # tokenizers give them to families that have none (Qwen3, ...)
        if "use_cache" in self._backbone_takes:
            kwargs.setdefault("use_cache", False)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                            return_dict=True, **kwargs)
        pooled = pool(out.last_hidden_state, attention_mask, self.config.pooling)
        return (self.projection(pooled) if self.projection is not None else pooled), out

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        truncate_dim: int | None = None,
        smoothing: float = 0.0,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MatryoshkaSequenceClassifierOutput | tuple:
        """``labels``: class ids (-100: ignored). ``truncate_dim``: the size whose logits are ``logits`` (default
        ``config.truncate_dim``, None: the full size; MRL: a nesting size, MRL-E: any size). ``smoothing``: label
        smoothing as in ``torch.nn.CrossEntropyLoss`` (``MRLTrainer`` passes ``label_smoothing_factor``).
        ``num_items_in_batch``: the Trainer's count of labelled examples over gradient accumulation and processes.
        Other keyword arguments (``position_ids``, ``output_hidden_states``, ...) go to the backbone."""
        check_logits_dim(truncate_dim, self.config)  # before running the backbone
        embeddings, out = self._embed(input_ids, attention_mask, token_type_ids, inputs_embeds, **kwargs)
        loss, per_dim, logits, nested_logits = classify(self.head, self.config, embeddings, labels, truncate_dim,
                                                        smoothing, num_items_in_batch)
        output = MatryoshkaSequenceClassifierOutput(
            loss=loss, per_dim_losses=per_dim, logits=logits, nested_logits=nested_logits, embeddings=embeddings,
            hidden_states=getattr(out, "hidden_states", None), attentions=getattr(out, "attentions", None))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def logits_at(self, input_ids: torch.Tensor, dim: int, attention_mask: torch.Tensor | None = None, **kwargs):
        """Logits from the first ``dim`` features only (MRL: a nesting size; MRL-E: any size)."""
        return self(input_ids, attention_mask, truncate_dim=dim, **kwargs).logits

    @torch.no_grad()
    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          truncate_dim: int | None = None, normalize: bool | None = None, **kwargs) -> torch.Tensor:
        """The pooled (projected) features cut to ``truncate_dim`` (default ``config.truncate_dim``), L2-normalised
        after slicing if ``normalize`` (default ``config.normalize_embeddings``)."""
        dim = truncate_dim if truncate_dim is not None else self.config.truncate_dim
        if dim is not None:
            validate_dim(dim, self.config.matryoshka_embedding_dim, name="truncate_dim")
        embeddings, _ = self._embed(input_ids, attention_mask, **kwargs)
        normalize = self.config.normalize_embeddings if normalize is None else normalize
        return truncate_embeddings(embeddings, dim, normalize=normalize)


AutoConfig.register(MRLTextClassificationConfig.model_type, MRLTextClassificationConfig, exist_ok=True)
AutoModelForSequenceClassification.register(MRLTextClassificationConfig, MRLModelForSequenceClassification,
                                            exist_ok=True)
