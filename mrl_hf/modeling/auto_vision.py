"""Matryoshka image models on any ``transformers`` vision backbone: ``MRLModelForImageClassification`` and
``MRLModelForImageEmbedding``.

The backbone is whatever ``AutoModel.from_config(config.backbone_config)`` builds (ViT, DINOv2, Swin, ConvNeXt, ResNet,
...). Its output is pooled into one vector (``config.pooling``), optionally projected to ``embedding_dim``, and either
classified at every nesting size (a ``MatryoshkaHead``, the nested cross-entropy of ``modeling/vision.py``) or returned
as a Matryoshka embedding.

Pooling (``config.pooling``):

- ``"auto"`` (default): the backbone's ``pooler_output`` when it gives one, else the [CLS] token when the backbone has
  one, else the mean over the patch tokens. A backbone with an optional pooling *layer* (ViT's dense + tanh, Swin's) is
  built without it, so the result is what the family's own ``...ForImageClassification`` head reads:

  ========  ==============================================================
  ResNet    ``pooler_output``: global average pool of the last feature map
  ConvNeXt  ``pooler_output``: layer norm of the spatial mean
  DINOv2    ``pooler_output``: the [CLS] token after the final layer norm
  ViT       the [CLS] token after the final layer norm (no pooler built)
  Swin      the mean over the tokens after the final layer norm
  BEiT      ``pooler_output``: the layer norm of the patch mean (its pooling layer is built, as its classifier
            builds it; also Data2VecVision and Hiera)
  ========  ==============================================================

- ``"pooler"``: the backbone's ``pooler_output`` (ViT / Swin are then built with their pooling layer);
- ``"cls"``: the first token of ``last_hidden_state`` (backbones with a [CLS] token only);
- ``"mean"``: the mean of ``last_hidden_state`` over the patch tokens (without [CLS], distillation and register
  tokens), or over height and width for a feature map ``(batch, channels, height, width)``.

Loading a plain checkpoint: ``MRLModelForImageClassification.from_pretrained(folder_or_id, num_labels=...,
nesting_list=...)`` reads the checkpoint's own config as ``backbone_config`` and loads its weights into ``backbone``: a
bare model (``ViTModel``; transformers adds the ``backbone.`` prefix) or a classifier (``ViTForImageClassification``;
its ``vit.`` prefix is renamed to ``backbone.`` while loading, its ``classifier.*`` dropped). Only the projection and
the head are new. Without ``num_labels`` / ``id2label`` the new head takes the checkpoint's own labels.
"""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput, logging

from ..config import MatryoshkaConfigMixin
from ..embeddings import truncate_embeddings
from ..nesting import validate_dim
from .auto_classification import (
    build_head,
    check_logits_dim,
    classify,
    config_with_labels,
    init_classifier_weights,
)
from .auto_text import BACKBONE_PREFIX
from .vision import MatryoshkaImageClassifierOutput
from .wrapped import WrappedModelMixin, without_pooler_kwargs

logger = logging.get_logger(__name__)

POOLING_MODES = ("auto", "pooler", "cls", "mean")


# where a vision config states the width of its last feature map, first match wins: per-stage lists (their last
# entry; MobileViT's last stage is followed by a wider 1x1 convolution, neck_hidden_sizes[-1]), then single widths
# (Swin's int embed_dim is its first stage's: not read; EfficientNet's top convolution is hidden_dim wide)
_STAGE_WIDTH_KEYS = ("neck_hidden_sizes", "hidden_sizes", "embed_dim")
_WIDTH_KEYS = _STAGE_WIDTH_KEYS + ("hidden_size", "hidden_dim")


def image_width(config: PretrainedConfig) -> int:
    """The width of a vision model's pooled vector: ``hidden_sizes[-1]`` (ResNet, ConvNeXt), ``hidden_size`` (ViT,
    Swin, DINOv2), ``neck_hidden_sizes[-1]`` (MobileViT), ``embed_dim[-1]`` (CvT), ``hidden_dim`` (EfficientNet)."""
    for key in _WIDTH_KEYS:
        value = getattr(config, key, None)
        if key in _STAGE_WIDTH_KEYS:
            value = value[-1] if isinstance(value, (list, tuple)) and value else None
        width = value
        if isinstance(width, int) and not isinstance(width, bool):
            return width
    raise ValueError(f"mrl_hf cannot tell the feature width of the {config.model_type!r} backbone from its config "
                     f"(none of {list(_WIDTH_KEYS)}); this family is not supported yet (MobileNet V1/V2 and "
                     "MobileViTV2 state only a width multiplier).")


@strict
class MRLImageConfig(MatryoshkaConfigMixin, PretrainedConfig):
    """Config of ``MRLModelForImageClassification`` and ``MRLModelForImageEmbedding``: the backbone's config plus the
    Matryoshka settings.

    backbone_config: the config of any vision model ``AutoModel`` builds (a ``PretrainedConfig`` or a dict with its
        ``model_type``). Default: ViT-base.
    pooling: ``"auto"``, ``"pooler"``, ``"cls"`` or ``"mean"`` (see the module docstring).
    embedding_dim: size of an optional linear projection after pooling; ``None`` keeps the backbone's width
        (``hidden_sizes[-1]`` for CNNs, ``hidden_size`` for transformers).
    num_labels / id2label: the classes of ``MRLModelForImageClassification``; ``efficient`` chooses MRL-E; and
        ``truncate_dim`` the size whose logits are ``output.logits`` (and the size of ``get_image_features``).
    """

    model_type = "mrl_image"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="vit")}
    # Not collected by the Trainer's evaluation loop: a classifier's predictions are (logits, nested_logits).
    keys_to_ignore_at_inference = ["per_dim_losses", "embeddings", "last_hidden_state", "hidden_states", "attentions"]

    backbone_config: dict | PretrainedConfig | None = None
    pooling: str = "auto"
    embedding_dim: int | None = None

    def __post_init__(self, **kwargs):
        if isinstance(self.backbone_config, dict) and not self.backbone_config.get("model_type"):
            raise ValueError("backbone_config is a dict without 'model_type'; give the backbone's config "
                             "(AutoConfig.from_pretrained(...)) or a dict with its model_type, e.g. 'vit'.")
        if isinstance(self.backbone_config, MRLImageConfig):
            raise TypeError("backbone_config is itself an MRLImageConfig; give the plain backbone's config.")
        self._check_embedding_dim()  # before the default nesting list is derived from it
        super().__post_init__(**kwargs)

    def _check_embedding_dim(self) -> None:
        if self.embedding_dim is not None and (isinstance(self.embedding_dim, bool)
                                               or not isinstance(self.embedding_dim, int) or self.embedding_dim < 1):
            raise ValueError(f"embedding_dim={self.embedding_dim!r} must be an int >= 1 (or None for the backbone's "
                             "width).")

    @property
    def backbone_width(self) -> int:
        return image_width(self.backbone_config)

    @property
    def matryoshka_embedding_dim(self) -> int:
        return self.embedding_dim if self.embedding_dim is not None else self.backbone_width

    def validate_matryoshka(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling={self.pooling!r} is not supported; choose one of {POOLING_MODES}.")
        self._check_embedding_dim()
        if not isinstance(self.backbone_config, PretrainedConfig):
            raise TypeError(f"backbone_config must be a transformers config (or a dict with its model_type), got "
                            f"{type(self.backbone_config).__name__}.")
        super().validate_matryoshka()


@dataclass
class MRLImageEmbeddingOutput(ModelOutput):
    """``embeddings``: the full pooled (and projected) vector, never normalised, shape ``(batch, d)``.
    ``truncated_embeddings``: its first ``truncate_dim`` features, L2-normalised (after slicing) when ``normalize``."""

    embeddings: torch.FloatTensor | None = None
    truncated_embeddings: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def prefix_tokens(backbone: nn.Module) -> int:
    """How many tokens come before the patch tokens: [CLS], a distillation token (DeiT), register tokens (DINOv2 with
    registers)."""
    embeddings = getattr(backbone, "embeddings", None) or getattr(getattr(backbone, "vision_model", None),
                                                                  "embeddings", None)  # CLIP's vision tower
    count = sum(isinstance(getattr(embeddings, name, None), torch.Tensor)
                for name in ("cls_token", "class_embedding", "distillation_token"))
    registers = getattr(embeddings, "register_tokens", None)
    return count + (registers.shape[1] if isinstance(registers, torch.Tensor) else 0)


def pool_image(output, mode: str, num_prefix_tokens: int) -> torch.Tensor:
    """One vector ``(batch, d)`` per image from a backbone's output (see the module docstring for the modes)."""
    pooled = getattr(output, "pooler_output", None)
    if mode == "auto":
        mode = "pooler" if pooled is not None else ("cls" if num_prefix_tokens else "mean")
    if mode == "pooler":
        if pooled is None:
            raise ValueError("pooling='pooler', but this backbone gives no pooler_output; use pooling='cls' or 'mean'.")
        return pooled.flatten(1)  # ResNet's is (batch, channels, 1, 1)
    hidden = output.last_hidden_state
    if hidden.dim() == 4:  # a feature map (batch, channels, height, width)
        if mode == "cls":
            raise ValueError("pooling='cls', but this backbone gives a feature map, not tokens; use pooling='mean'.")
        return hidden.mean((-2, -1))
    if mode == "cls":
        if not num_prefix_tokens:
            raise ValueError("pooling='cls', but this backbone has no [CLS] token; use pooling='mean' or 'auto'.")
        return hidden[:, 0]
    return hidden[:, num_prefix_tokens:].mean(1)


def classifier_reads_pooler(config: PretrainedConfig) -> bool:
    """Whether the family's own ``...ForImageClassification`` builds its base model with the optional pooling layer
    (BEiT, Data2VecVision, Hiera: a mean over the patches and a layer norm), so that ``pooling="auto"`` reads it too."""
    from transformers import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    try:
        return "add_pooling_layer=True" in inspect.getsource(MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING[type(config)])
    except (KeyError, OSError, TypeError):
        return False


def build_image_backbone(config: PretrainedConfig, pooling: str) -> PreTrainedModel:
    """``AutoModel.from_config(config)``; a backbone with an ``add_pooling_layer`` switch (ViT, Swin) gets its pooling
    layer only for ``pooling="pooler"``, or ``"auto"`` where the family's classifier reads it: an unused one would
    hold parameters without gradients (which DDP rejects)."""
    if getattr(config, "mask_ratio", None) and config.model_type == "vit_mae":
        config = copy.deepcopy(config)  # not the caller's: its pre-training model still needs the mask
        config.mask_ratio = 0.0  # MAE pre-training hides 75% of the patches at random, at every call; encode them all
    keep = pooling == "pooler" or (pooling == "auto" and classifier_reads_pooler(config))
    backbone = AutoModel.from_config(config, **without_pooler_kwargs(config, keep_pooler=keep))
    if "pixel_values" not in inspect.signature(backbone.forward).parameters:
        raise ValueError(f"{type(backbone).__name__} takes no pixel_values: it is not a vision model; for text use "
                         "MRLModelForTextEmbedding or MRLModelForSequenceClassification.")
    return backbone


class MRLImagePreTrainedModel(WrappedModelMixin, PreTrainedModel):
    config_class = MRLImageConfig
    config: MRLImageConfig
    base_model_prefix = BACKBONE_PREFIX
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # What the backbone supports decides (transformers checks the backbone class itself when it is built).
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    supports_gradient_checkpointing = True
    # An unused pooling layer and the classifier of a plain checkpoint (ViTForImageClassification, ...).
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)pooler\.", r"^classifier\."]
    def __init__(self, config: MRLImageConfig):
        super().__init__(config)
        config.validate_matryoshka()
        self.backbone = build_image_backbone(config.backbone_config, config.pooling)
        width = config.backbone_width
        self.projection = nn.Linear(width, config.embedding_dim) if config.embedding_dim is not None else None
        self._prefix_tokens = prefix_tokens(self.backbone)
        if config.pooling == "cls" and not self._prefix_tokens:
            raise ValueError(f"pooling='cls', but the {type(self.backbone).__name__} backbone has no [CLS] token; use "
                             "pooling='auto' or 'mean'.")

    def _init_weights(self, module):
        super()._init_weights(module)  # the backbone's own modules are initialised by the backbone's _init_weights
        if module is self.projection or module in getattr(getattr(self, "head", None), "classifiers", ()):
            init_classifier_weights(module, getattr(self.config.backbone_config, "initializer_range", None) or 0.02)

    # ---- loading (plain checkpoints: see mrl_hf/modeling/wrapped.py) ---------------------------------------------
    def _match_own_checkpoint(self, path, info) -> None:
        """An mrl_hf before 2026-12-05 built BEiT / Data2VecVision / Hiera without their pooling layer, so that
        ``pooling="auto"`` read the [CLS] token (or the patch mean); such a checkpoint has no pooler weights. It loads
        as it was trained, with the pooling written out, instead of with a freshly initialised pooler."""
        pooler = getattr(self.backbone, "pooler", None)
        if self.config.pooling != "auto" or not isinstance(pooler, nn.Module):
            return
        keys = {f"{BACKBONE_PREFIX}.pooler.{name}" for name, _ in pooler.named_parameters()}
        if not keys or not keys <= set((info or {}).get("missing_keys", ())):
            return
        self.backbone.pooler = None
        self.config.pooling = "cls" if self._prefix_tokens else "mean"
        logger.warning(f"{str(path)!r} was saved without the pooling layer of its {type(self.backbone).__name__} "
                       f"(an earlier mrl_hf's pooling='auto'): it is loaded as trained, with "
                       f"pooling={self.config.pooling!r}; save it again to record that.")

    _plain_settings = frozenset({"nesting_list", "truncate_dim", "relative_importance", "normalize_embeddings",
                                 "efficient", "pooling", "embedding_dim", "num_labels", "id2label", "label2id"})
    _auto_class_name = "AutoModelForImageClassification"

    @classmethod
    def _config_for_plain(cls, backbone_config, settings):
        """Without ``num_labels`` / ``id2label`` the new head takes the checkpoint's own labels."""
        return config_with_labels(cls.config_class, backbone_config, settings)

    # ---- forward ------------------------------------------------------------------------------------------------
    def _check_pixel_values(self, pixel_values) -> None:
        channels = getattr(self.config.backbone_config, "num_channels", None)
        expected = f"(batch, {channels or 'channels'}, height, width)"
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor of shape {expected}, got "
                            f"{type(pixel_values).__name__}.")
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; expected {expected}. Add the "
                             "channel dim with pixel_values.unsqueeze(1) for grayscale images.")
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values is an empty batch (0 images); skip empty batches "
                             "(e.g. dataloader_drop_last=True).")
        if channels is not None and pixel_values.shape[1] != channels:
            raise ValueError(f"pixel_values has {pixel_values.shape[1]} channels, but the backbone's num_channels is "
                             f"{channels}; convert the images (e.g. .repeat(1, 3, 1, 1) for grayscale -> RGB) or "
                             "build the model with the matching num_channels.")

    def _embed(self, pixel_values, **kwargs):
        """``(pooled and projected features (batch, d), the backbone's output)``; ``kwargs`` go to the backbone."""
        self._check_pixel_values(pixel_values)
        kwargs.pop("return_dict", None)  # the backbone's output is read by name below
        out = self.backbone(pixel_values, return_dict=True, **kwargs)
        pooled = pool_image(out, self.config.pooling, self._prefix_tokens)
        if pooled.shape[-1] != self.config.backbone_width:
            other = [mode for mode in POOLING_MODES if mode != self.config.pooling]
            raise ValueError(f"pooling={self.config.pooling!r} gave {pooled.shape[-1]} features per image, but mrl_hf "
                             f"reads the width {self.config.backbone_width} from the {type(self.backbone).__name__} "
                             f"config; another pooling ({other}) may give that width, else this family is not "
                             "supported yet.")
        return (self.projection(pooled) if self.projection is not None else pooled), out

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.Tensor, truncate_dim: int | None = None,
                           normalize: bool | None = None, **kwargs) -> torch.Tensor:
        """Embeddings ``(batch, truncate_dim)``: the first ``truncate_dim`` features (default
        ``config.truncate_dim``, None = all), L2-normalised after slicing if ``normalize`` (default
        ``config.normalize_embeddings``)."""
        dim = self.config.truncate_dim if truncate_dim is None else truncate_dim
        if dim is not None:  # fail before running the backbone
            validate_dim(dim, self.config.matryoshka_embedding_dim, name="truncate_dim")
        embeddings, _ = self._embed(pixel_values, **kwargs)
        normalize = self.config.normalize_embeddings if normalize is None else normalize
        return truncate_embeddings(embeddings, dim, normalize=normalize)


class MRLModelForImageClassification(MRLImagePreTrainedModel):
    """Image classification with a Matryoshka head on any ``AutoModel`` vision backbone.

    ``forward(pixel_values, labels=...)`` returns ``MatryoshkaImageClassifierOutput`` (as ``modeling/vision.py``'s
    ResNet / ViT classifiers): ``nested_logits`` at every nesting size, ``logits`` at ``truncate_dim`` (default: the
    full size), the nested cross-entropy and ``per_dim_losses``. ``MRLTrainer`` trains it and logs ``loss_dim_{m}``
    (``label_smoothing_factor`` smooths every size). ``logits_at(pixel_values, m)`` classifies from ``m`` features.
    """

    # forward takes num_items_in_batch: the nested cross-entropy is a sum over labelled images divided by it.
    accepts_loss_kwargs = True

    def __init__(self, config: MRLImageConfig):
        super().__init__(config)
        self.head = build_head(config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                truncate_dim: int | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, smoothing: float = 0.0,
                num_items_in_batch: int | torch.Tensor | None = None, **kwargs):
        """``labels``: class ids (-100: ignored). ``truncate_dim``: the size whose logits are ``logits`` (default
        ``config.truncate_dim``; MRL: a nesting size, MRL-E: any size). ``smoothing``: label smoothing as in
        ``torch.nn.CrossEntropyLoss`` (``MRLTrainer`` passes ``label_smoothing_factor``). ``num_items_in_batch``: the
        Trainer's count of labelled images over gradient accumulation and processes. Other keyword arguments go to
        the backbone (e.g. ViT's ``interpolate_pos_encoding``)."""
        if pixel_values is None:
            raise ValueError("pixel_values is required: a float tensor (batch, channels, height, width).")
        check_logits_dim(truncate_dim, self.config)  # before running the backbone
        embeddings, out = self._embed(pixel_values, output_hidden_states=bool(output_hidden_states), **kwargs)
        loss, per_dim, logits, nested_logits = classify(self.head, self.config, embeddings, labels, truncate_dim,
                                                        smoothing, num_items_in_batch)
        output = MatryoshkaImageClassifierOutput(loss=loss, per_dim_losses=per_dim, logits=logits,
                                                 nested_logits=nested_logits, embeddings=embeddings,
                                                 hidden_states=getattr(out, "hidden_states", None),
                                                 attentions=getattr(out, "attentions", None))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def logits_at(self, pixel_values: torch.Tensor, dim: int, **kwargs) -> torch.Tensor:
        """Logits from the first ``dim`` features only (MRL: a nesting size; MRL-E: any size)."""
        return self(pixel_values, truncate_dim=dim, **kwargs).logits


class MRLModelForImageEmbedding(MRLImagePreTrainedModel):
    """Matryoshka image embeddings from any ``AutoModel`` vision backbone: every prefix in ``config.nesting_list`` is
    meant as an embedding. ``forward(pixel_values, truncate_dim=, normalize=)`` returns ``MRLImageEmbeddingOutput``
    (``truncated_embeddings`` is sliced first, then L2-normalised). Loads plain checkpoints and this family's
    classifier checkpoints (whose head it drops)."""

    _reads_stated_contract = True  # the sizes a plain checkpoint states are its embedding sizes

    _keys_to_ignore_on_load_unexpected = [*MRLImagePreTrainedModel._keys_to_ignore_on_load_unexpected, r"^head\."]
    accepts_loss_kwargs = False

    def __init__(self, config: MRLImageConfig):
        super().__init__(config)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor | None = None, truncate_dim: int | None = None,
                normalize: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> MRLImageEmbeddingOutput | tuple:
        if pixel_values is None:
            raise ValueError("pixel_values is required: a float tensor (batch, channels, height, width).")
        dim = truncate_dim if truncate_dim is not None else self.config.truncate_dim
        if dim is not None:  # fail before running the backbone
            validate_dim(dim, self.config.matryoshka_embedding_dim, name="truncate_dim")
        embeddings, out = self._embed(pixel_values, output_hidden_states=bool(output_hidden_states), **kwargs)
        normalize = self.config.normalize_embeddings if normalize is None else normalize
        output = MRLImageEmbeddingOutput(
            embeddings=embeddings, truncated_embeddings=truncate_embeddings(embeddings, dim, normalize=normalize),
            last_hidden_state=out.last_hidden_state, hidden_states=getattr(out, "hidden_states", None),
            attentions=getattr(out, "attentions", None))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


AutoConfig.register(MRLImageConfig.model_type, MRLImageConfig, exist_ok=True)
AutoModel.register(MRLImageConfig, MRLModelForImageEmbedding, exist_ok=True)
AutoModelForImageClassification.register(MRLImageConfig, MRLModelForImageClassification, exist_ok=True)
