"""MRL image classifiers on transformers' ResNet and ViT backbones (the paper's Sections 4.1-4.2).

The backbone's pooled feature (ResNet: global average pool; ViT: the [CLS] token after the final layer
norm) is optionally projected to ``embedding_dim`` and fed to a ``MatryoshkaHead``. The fixed-feature
baseline FF-k is the same class with ``nesting_list=[k]`` (a projection to k dims and one classifier).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    PreTrainedModel,
    ResNetConfig,
    ResNetModel,
    ViTConfig,
    ViTModel,
)
from transformers.models.resnet.modeling_resnet import ResNetPreTrainedModel
from transformers.models.vit.modeling_vit import ViTPreTrainedModel
from transformers.utils import ModelOutput

from ..config import MATRYOSHKA_KEYS, MatryoshkaConfigMixin
from ..embeddings import truncate_embeddings
from ..heads import MatryoshkaHead, refuse_precisions
from ..losses import MatryoshkaCrossEntropyLoss
from .base import MatryoshkaPreTrainedMixin

# Trainer's evaluation loop skips these outputs, so ``compute_metrics`` receives (logits, nested_logits).
_KEYS_TO_IGNORE_AT_INFERENCE = ["per_dim_losses", "embeddings", "hidden_states", "attentions"]


def _resolve_embedding_dim(config, backbone_width: int) -> None:
    """``embedding_dim=None`` means: the last nesting size if a list was given (FF-k: ``[k]``), else the
    backbone width (no projection)."""
    if config.embedding_dim is None:
        nesting = config.nesting_list
        if isinstance(nesting, (list, tuple)) and nesting and isinstance(nesting[-1], int):
            config.embedding_dim = nesting[-1]
        else:
            config.embedding_dim = backbone_width


@strict
class MRLResNetConfig(MatryoshkaConfigMixin, ResNetConfig):
    """``ResNetConfig`` plus the Matryoshka fields and an optional projection size ``embedding_dim``.

    ``embedding_dim=None``: the pooled width ``hidden_sizes[-1]`` (2048 for ResNet-50), or ``nesting_list[-1]``
    when a nesting list is given, so ``nesting_list=[k]`` is the FF-k baseline.
    """

    model_type = "mrl_resnet"
    keys_to_ignore_at_inference = _KEYS_TO_IGNORE_AT_INFERENCE

    embedding_dim: int | None = None

    def __post_init__(self, **kwargs):
        _resolve_embedding_dim(self, list(self.hidden_sizes)[-1])
        super().__post_init__(**kwargs)

    @property
    def matryoshka_embedding_dim(self) -> int:
        return self.embedding_dim


@strict
class MRLViTConfig(MatryoshkaConfigMixin, ViTConfig):
    """``ViTConfig`` plus the Matryoshka fields and an optional projection size ``embedding_dim``
    (default: ``hidden_size``, 768 for ViT-B/16, or ``nesting_list[-1]`` when a list is given)."""

    model_type = "mrl_vit"
    keys_to_ignore_at_inference = _KEYS_TO_IGNORE_AT_INFERENCE

    embedding_dim: int | None = None

    def __post_init__(self, **kwargs):
        _resolve_embedding_dim(self, self.hidden_size)
        super().__post_init__(**kwargs)

    @property
    def matryoshka_embedding_dim(self) -> int:
        return self.embedding_dim


@dataclass
class MatryoshkaImageClassifierOutput(ModelOutput):
    """``logits`` are the full-dim logits; ``nested_logits[i]`` those at ``config.nesting_list[i]``;
    ``per_dim_losses[i]`` the unweighted loss there (detached, for logging); ``embeddings`` the full
    ``embedding_dim`` representation before any truncation or normalisation; ``hidden_states`` / ``attentions`` the
    backbone's, when asked for (``output_hidden_states`` / ``output_attentions``)."""

    loss: torch.FloatTensor | None = None
    per_dim_losses: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    nested_logits: tuple[torch.FloatTensor, ...] | None = None
    embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class _MRLImageClassifier(MatryoshkaPreTrainedMixin):
    """What the ResNet and ViT classifiers share: projection, Matryoshka head, loss, checks, freezing."""

    _class_for_any_family = "MRLModelForImageClassification"

    # forward takes num_items_in_batch (an explicit flag: the Trainer would otherwise infer it from **kwargs).
    accepts_loss_kwargs = True

    _backbone_class: type = None  # ResNetModel / ViTModel

    def _build_head(self, backbone_width: int) -> None:
        config = self.config
        config.validate_matryoshka()
        if isinstance(config.num_labels, bool) or config.num_labels < 1:
            raise ValueError(f"num_labels={config.num_labels} must be >= 1; pass num_labels=<number of classes>.")
        refuse_precisions(config)
        self.projection = (nn.Identity() if config.embedding_dim == backbone_width
                           else nn.Linear(backbone_width, config.embedding_dim))
        self.head = MatryoshkaHead(config.nesting_list, config.num_labels, efficient=config.efficient)
        self._frozen = []

    # ---- input checks -------------------------------------------------------------------------------
    def _check_pixel_values(self, pixel_values, **kwargs) -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor of shape (batch, {self.config.num_channels}, "
                            f"height, width), got {type(pixel_values).__name__}.")
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; expected (batch, {self.config.num_channels}, "
                "height, width). Add the channel dim with pixel_values.unsqueeze(1) for grayscale images.")
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values is an empty batch (0 images); skip empty batches "
                             "(e.g. dataloader_drop_last=True).")
        if pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels, but config.num_channels="
                f"{self.config.num_channels}; convert the images (e.g. .repeat(1, 3, 1, 1) for grayscale -> RGB) "
                "or build the model with the matching num_channels.")

    def _check_labels(self, labels: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=device)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be integer class ids, got dtype {labels.dtype}.")
        labels = labels.reshape(-1).long()
        if labels.numel() != batch:
            raise ValueError(f"got {labels.numel()} labels for {batch} images; give one class id per image.")
        if labels.device.type != "cpu":  # no host sync on an accelerator: its cross-entropy kernel asserts instead
            return labels
        n = self.config.num_labels
        bad = labels[(labels != -100) & ((labels < 0) | (labels >= n))]
        if bad.numel():
            raise ValueError(f"label {bad[0].item()} is outside 0..{n - 1} (config.num_labels={n}); "
                             "fix the labels or build the model with a larger num_labels.")
        return labels

    # ---- forward ------------------------------------------------------------------------------------
    def _pooled_features(self, pixel_values, output_hidden_states, **kwargs):
        """``(pooled features, the backbone's hidden states or None, its attentions or None)``."""
        raise NotImplementedError

    def _embed(self, pixel_values, output_hidden_states=False, **kwargs):
        self._check_pixel_values(pixel_values, **kwargs)
        pooled, hidden_states, attentions = self._pooled_features(pixel_values, output_hidden_states, **kwargs)
        return self.projection(pooled), hidden_states, attentions

    def forward(self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None,
                smoothing: float = 0.0, num_items_in_batch: int | torch.Tensor | None = None, **kwargs):
        """``labels``: class ids (-100: ignored). ``smoothing``: label smoothing as in ``torch.nn.CrossEntropyLoss``
        (not named ``label_...``: the Trainer would take it for a label column)
        (``MRLTrainer`` passes the Trainer's ``label_smoothing_factor``); ``num_items_in_batch``: the Trainer's count
        of labelled images over all gradient accumulation steps and processes (the loss is then the sum over this
        batch divided by it, so GA and DDP train on the mean over the whole global batch). Other keyword arguments
        go to the backbone (e.g. ViT's ``interpolate_pos_encoding``)."""
        if pixel_values is None:
            raise ValueError("pixel_values is required: a float tensor (batch, channels, height, width).")
        embeddings, hidden_states, attentions = self._embed(pixel_values, bool(output_hidden_states), **kwargs)
        nested_logits = self.head(embeddings)
        loss = per_dim = None
        if labels is not None:
            labels = self._check_labels(labels, embeddings.shape[0], embeddings.device)
            loss_fct = MatryoshkaCrossEntropyLoss(self.config.relative_importance, label_smoothing=smoothing)
            loss, per_dim = loss_fct(nested_logits, labels, num_items_in_batch=num_items_in_batch)[:2]
        out = MatryoshkaImageClassifierOutput(loss=loss, per_dim_losses=per_dim, logits=nested_logits[-1],
                                              nested_logits=nested_logits, embeddings=embeddings,
                                              hidden_states=hidden_states, attentions=attentions)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.Tensor, truncate_dim: int | None = None,
                           normalize: bool | None = None) -> torch.Tensor:
        """Embeddings of shape (batch, truncate_dim): the first ``truncate_dim`` features (default
        ``config.truncate_dim``, None = all), L2-normalised after slicing if ``normalize`` (default
        ``config.normalize_embeddings``)."""
        dim = self.config.truncate_dim if truncate_dim is None else truncate_dim
        normalize = self.config.normalize_embeddings if normalize is None else normalize
        if dim is not None:  # fail before running the backbone
            from ..nesting import validate_dim
            validate_dim(dim, self.config.embedding_dim, name="truncate_dim")
        embeddings = self._embed(pixel_values)[0]
        return truncate_embeddings(embeddings, dim, normalize=normalize)

    @torch.no_grad()
    def logits_at(self, pixel_values: torch.Tensor, dim: int) -> torch.Tensor:
        """Logits from the first ``dim`` features only (MRL: a nesting size; MRL-E: any size)."""
        embeddings = self._embed(pixel_values)[0]
        return self.head(embeddings, dim=dim)

    # ---- backbones from plain checkpoints and partial fine-tuning --------------------------------------
    def backbone_stages(self) -> list[nn.Module]:
        """The backbone's blocks in input-to-output order; ``freeze_backbone`` keeps the last k trainable."""
        raise NotImplementedError

    def freeze_backbone(self, trainable_stages: int = 0) -> None:
        """Freeze the backbone except its last ``trainable_stages`` stages (the paper's Table 26);
        the projection and head stay trainable. Frozen BatchNorm layers keep their running statistics."""
        stages = self.backbone_stages()
        if isinstance(trainable_stages, bool) or not isinstance(trainable_stages, int) or not (
                0 <= trainable_stages <= len(stages)):
            raise ValueError(f"trainable_stages={trainable_stages!r} must be an int in 0..{len(stages)} "
                             f"(this backbone has {len(stages)} stages).")
        for p in self.backbone.parameters():
            p.requires_grad_(True)
        self._frozen = stages[: len(stages) - trainable_stages]
        for module in self._frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()
        return self

    @classmethod
    def from_backbone(cls, backbone, num_labels: int, trainable_stages: int | None = None, **mrl_kwargs):
        """An MRL classifier whose backbone is copied from a plain checkpoint.

        ``backbone``: a ``ResNetModel``/``ViTModel``, their ``...ForImageClassification`` models, or a Hub id /
        local path of either (the plain classifier head is dropped). ``mrl_kwargs`` are Matryoshka fields
        (``nesting_list``, ``efficient``, ``embedding_dim``, ...). ``trainable_stages=k`` freezes all but the
        last k backbone stages.
        """
        if isinstance(backbone, str):
            backbone = AutoModel.from_pretrained(backbone)
        if not isinstance(backbone, PreTrainedModel):
            raise TypeError(f"backbone must be a transformers model or a checkpoint path, got {type(backbone).__name__}.")
        base = backbone.base_model
        if not isinstance(base, cls._backbone_class):
            raise TypeError(f"{cls.__name__}.from_backbone needs a {cls._backbone_class.__name__} checkpoint, "
                            f"got {type(base).__name__}.")
        # the backbone's own fields; an mrl_hf backbone's Matryoshka settings are not carried over (they are the new
        # model's to choose), and mrl_kwargs may override any field (given twice, they used to raise a TypeError)
        dropped = {"model_type", "architectures", "transformers_version", "id2label", "label2id", "num_labels",
                   "embedding_dim", *MATRYOSHKA_KEYS}
        plain = {k: v for k, v in base.config.to_dict().items() if k not in dropped}
        config = cls.config_class(**{**plain, **mrl_kwargs, "num_labels": num_labels})
        model = cls(config)
        missing, unexpected = model.backbone.load_state_dict(base.state_dict(), strict=False)
        missing, unexpected = ([k for k in keys if not k.startswith("pooler.")] for keys in (missing, unexpected))
        if missing or unexpected:  # ViT's optional pooler is the only part we do not use
            raise ValueError(f"backbone weights do not fit: missing {missing}, unexpected {unexpected}.")
        if trainable_stages is not None:
            model.freeze_backbone(trainable_stages)
        return model


class MRLResNetForImageClassification(_MRLImageClassifier, ResNetPreTrainedModel):
    """ResNet (transformers' ``ResNetModel``) + optional projection + ``MatryoshkaHead``."""

    config_class = MRLResNetConfig
    config: MRLResNetConfig
    _backbone_class = ResNetModel
    _plain_model_types = ("resnet",)
    _keys_to_ignore_on_load_unexpected = [r"^classifier\."]  # a plain classifier's head
    # transformers' ResNet has no activation checkpointing; this class checkpoints one stage at a time.
    supports_gradient_checkpointing = True
    gradient_checkpointing = False

    def __init__(self, config: MRLResNetConfig):
        super().__init__(config)
        self.resnet = ResNetModel(config)
        self._build_head(config.hidden_sizes[-1])
        self.post_init()

    @property
    def backbone(self) -> ResNetModel:
        return self.resnet

    def _pooled_features(self, pixel_values, output_hidden_states, **kwargs):
        if kwargs:  # ResNetModel takes none and would drop them silently (label_smoothing= instead of smoothing=)
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments {sorted(kwargs)}; its backbone "
                            "takes none (label smoothing is smoothing=, the loss weights config.relative_importance).")
        if not (self.gradient_checkpointing and self.training):
            out = self.resnet(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
            return out.pooler_output.flatten(1), out.hidden_states, None
        checkpoint = self._gradient_checkpointing_func
        if getattr(checkpoint, "keywords", {}).get("use_reentrant"):
            raise ValueError("MRLResNetForImageClassification checkpoints with use_reentrant=False only: the reentrant "
                             "recompute would update the BatchNorm running statistics a second time. Call "
                             "activation_checkpointing_enable() without use_reentrant=True.")
        hidden = self.resnet.embedder(pixel_values)
        hidden_states = (hidden,) if output_hidden_states else None
        for stage in self.resnet.encoder.stages:
            hidden = checkpoint(stage.__call__, hidden,
                                context_fn=lambda stage=stage: (contextlib.nullcontext(), _batchnorm_stats_kept(stage)))
            if output_hidden_states:
                hidden_states += (hidden,)
        return self.resnet.pooler(hidden).flatten(1), hidden_states, None

    def backbone_stages(self) -> list[nn.Module]:
        return [self.resnet.embedder, *self.resnet.encoder.stages]


@contextlib.contextmanager
def _batchnorm_stats_kept(module: nn.Module):
    """While a checkpointed block is recomputed, leave its BatchNorm running statistics as the first pass left them
    (momentum 0 keeps them; the counter is put back), so a checkpointed run equals a plain one."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


class MRLViTForImageClassification(_MRLImageClassifier, ViTPreTrainedModel):
    """ViT (transformers' ``ViTModel``, [CLS] token after the final layer norm) + optional projection +
    ``MatryoshkaHead``."""

    config_class = MRLViTConfig
    config: MRLViTConfig
    _plain_model_types = ("vit",)
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)pooler\.", r"^classifier\."]
    _backbone_class = ViTModel

    def __init__(self, config: MRLViTConfig):
        super().__init__(config)
        self.vit = ViTModel(config, add_pooling_layer=False)
        self._build_head(config.hidden_size)
        self.post_init()

    @property
    def backbone(self) -> ViTModel:
        return self.vit

    def _check_pixel_values(self, pixel_values, interpolate_pos_encoding=False, **kwargs) -> None:
        super()._check_pixel_values(pixel_values)
        if interpolate_pos_encoding:
            return
        size = self.config.image_size
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        if tuple(pixel_values.shape[-2:]) != size:
            raise ValueError(f"pixel_values are {tuple(pixel_values.shape[-2:])} images, but this ViT was built for "
                             f"config.image_size={size}; resize the images to {size}.")

    def _pooled_features(self, pixel_values, output_hidden_states, **kwargs):
        out = self.vit(pixel_values, output_hidden_states=output_hidden_states, **kwargs)
        return out.last_hidden_state[:, 0], out.hidden_states, out.attentions

    def backbone_stages(self) -> list[nn.Module]:
        return [self.vit.embeddings, *self.vit.layers[:-1], nn.ModuleList([self.vit.layers[-1], self.vit.layernorm])]


AutoConfig.register(MRLResNetConfig.model_type, MRLResNetConfig, exist_ok=True)
AutoConfig.register(MRLViTConfig.model_type, MRLViTConfig, exist_ok=True)
for _config, _model in ((MRLResNetConfig, MRLResNetForImageClassification),
                        (MRLViTConfig, MRLViTForImageClassification)):
    AutoModelForImageClassification.register(_config, _model, exist_ok=True)
