"""ALIGN/CLIP-style dual encoder with Matryoshka embeddings on both towers (the paper's vision + language setup), from
any (vision, text) pair of ``transformers`` models, as transformers' ``VisionTextDualEncoderModel`` builds one.

The text tower is any ``AutoModel`` text model (BERT, XLM-RoBERTa, ModernBERT, MPNet, a decoder such as Qwen3, ...),
pooled like ``MRLModelForTextEmbedding`` (``text_pooling``: masked mean, first token or last token); the image tower is
any ``AutoModel`` vision model (ViT, DINOv2, ConvNeXt, Swin, ResNet, ...), pooled like ``MRLModelForImageEmbedding``
(``vision_pooling="auto"``: ViT's [CLS] after the final layer norm, ResNet's global average pool, ...). Each is
projected to ``projection_dim``. Training minimises the nested
symmetric InfoNCE ``sum_m c_m * L_m``: at every size m in ``nesting_list`` the first m features of each image and
text embedding are L2-normalised on their own and compared by cosine similarity / temperature, with in-batch
negatives. In a multi-process run the embeddings are gathered across processes first (differentiably), so every
process sees the global batch's negatives; ``gather_across_processes=False`` turns that off.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoProcessor,
    PretrainedConfig,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

from ..config import MATRYOSHKA_KEYS, MatryoshkaConfigMixin
from ..embeddings import truncate_embeddings
from ..losses import nested_contrastive_loss, nested_cosine_similarities
from ..nesting import validate_dim
from .auto_text import build_backbone, is_seq2seq_family, text_hidden_size
from .auto_vision import POOLING_MODES as VISION_POOLING_MODES
from .auto_vision import build_image_backbone, image_width, pool_image, prefix_tokens
from .base import MatryoshkaPreTrainedMixin
from .gather import all_gather_with_grad
from .text_common import POOLING_MODES as TEXT_POOLING_MODES
from .text_common import pool, right_padding
from .wrapped import backbone_class


@strict
class MRLAlignConfig(MatryoshkaConfigMixin, PretrainedConfig):
    """Config of ``MRLAlignModel``.

    text_config: the config of any ``AutoModel`` text model (or a dict with its ``model_type``); default: BERT-base.
    vision_config: the config of any ``AutoModel`` vision model (or a dict with its ``model_type``); default: ViT-B/16.
    projection_dim: size of both embeddings (default: the last entry of ``nesting_list`` if one is given, else 640
        as in ALIGN); it must equal ``nesting_list[-1]``.
    text_pooling: ``"mean"`` (masked mean of the last hidden states, as sentence-transformers models use), ``"cls"``
        or ``"last_token"`` (decoders).
    vision_pooling: ``"auto"`` (what the family's own classifier reads), ``"pooler"``, ``"cls"`` or ``"mean"``
        (see ``mrl_hf.modeling.auto_vision``).
    temperature_init_value: initial softmax temperature of the contrastive loss (CLIP's 0.07).
    learnable_temperature: learn it (stored as ``logit_scale = log(1 / temperature)``, capped at ``max_logit_scale``)
        or keep it fixed.
    gather_across_processes: in a multi-process run, compute the loss over the global batch (ALIGN/CLIP training).
    """

    model_type = "mrl_align"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="bert"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="vit"),
    }
    keys_to_ignore_at_inference = ["per_dim_losses", "nested_logits_per_image", "nested_logits_per_text",
                                   "text_embeds", "image_embeds"]

    text_config: dict | PretrainedConfig | None = None
    vision_config: dict | PretrainedConfig | None = None
    projection_dim: int | None = None
    text_pooling: str = "mean"
    vision_pooling: str = "auto"
    temperature_init_value: float = 0.07
    learnable_temperature: bool = True
    max_logit_scale: float = 100.0
    gather_across_processes: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.projection_dim is None:
            self.projection_dim = list(self.nesting_list)[-1] if self.nesting_list else 640
        super().__post_init__(**kwargs)

    @property
    def matryoshka_embedding_dim(self) -> int:
        return self.projection_dim

    def validate_matryoshka(self) -> None:
        if isinstance(self.projection_dim, bool) or not isinstance(self.projection_dim, int) or self.projection_dim < 1:
            raise ValueError(f"projection_dim={self.projection_dim!r} must be an int >= 1.")
        if self.nesting_list is not None and list(self.nesting_list) and list(self.nesting_list)[-1] != self.projection_dim:
            raise ValueError(
                f"projection_dim={self.projection_dim} but nesting_list={list(self.nesting_list)} ends with "
                f"{list(self.nesting_list)[-1]}; the last nesting size is the full embedding, so set "
                f"projection_dim={list(self.nesting_list)[-1]} or end nesting_list with {self.projection_dim}.")
        if self.text_pooling not in TEXT_POOLING_MODES:
            raise ValueError(f"text_pooling={self.text_pooling!r} is not supported; choose one of {TEXT_POOLING_MODES}.")
        if self.vision_pooling not in VISION_POOLING_MODES:
            raise ValueError(f"vision_pooling={self.vision_pooling!r} is not supported; choose one of "
                             f"{VISION_POOLING_MODES}.")
        if not self.temperature_init_value > 0:
            raise ValueError(f"temperature_init_value={self.temperature_init_value} must be > 0 (e.g. 0.07).")
        if not self.max_logit_scale > 0:
            raise ValueError(f"max_logit_scale={self.max_logit_scale} must be > 0 (CLIP uses 100).")
        if 1.0 / self.temperature_init_value > self.max_logit_scale * (1 + 1e-6):  # the cap would replace it
            floor = 1.0 / self.max_logit_scale
            raise ValueError(f"temperature_init_value={self.temperature_init_value} is below 1 / max_logit_scale = "
                             f"{floor:g}, so the cap would train with {floor:g} instead; raise max_logit_scale or the "
                             "temperature.")
        for name in ("text_config", "vision_config"):
            if not isinstance(getattr(self, name), PretrainedConfig):
                raise TypeError(f"{name} must be a transformers config (or a dict with its model_type), got "
                                f"{type(getattr(self, name)).__name__}.")
        if getattr(self.text_config, "is_encoder_decoder", False) or is_seq2seq_family(self.text_config):
            raise ValueError(f"text_config is a {self.text_config.model_type!r} config, an encoder-decoder family: the "
                             "text tower is an encoder or a decoder alone (AutoModel would build a random decoder).")
        for name, kind, takes in (("text_config", "text", "input_ids"), ("vision_config", "vision", "pixel_values")):
            tower = backbone_class(getattr(self, name))
            if takes not in inspect.signature(tower.forward).parameters:
                raise ValueError(f"{name} is a {getattr(self, name).model_type!r} config, whose {tower.__name__} takes "
                                 f"no {takes}; give a {kind} model's config.")
        super().validate_matryoshka()


@dataclass
class MRLAlignOutput(ModelOutput):
    """``loss``: nested symmetric InfoNCE ``sum_m c_m * L_m`` (when ``return_loss``); ``per_dim_losses[i]``: the
    unweighted ``L_m`` at ``config.nesting_list[i]`` (detached). ``logits_per_image`` ``(n_images, n_texts)``:
    full-dim cosine similarities times ``1 / temperature``; ``logits_per_text`` its transpose;
    ``nested_logits_per_image[i]`` / ``nested_logits_per_text[i]`` the same at ``nesting_list[i]`` (each prefix
    L2-normalised on its own). ``image_embeds`` / ``text_embeds``: full projected embeddings, not normalised.
    Logits and loss are over this process's batch and the global batch respectively."""

    loss: torch.FloatTensor | None = None
    per_dim_losses: torch.FloatTensor | None = None
    logits_per_image: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    nested_logits_per_image: tuple[torch.FloatTensor, ...] | None = None
    nested_logits_per_text: tuple[torch.FloatTensor, ...] | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None


class MRLAlignProcessor(ProcessorMixin):
    """A tokenizer and an image processor under one name: ``processor(text=..., images=..., return_tensors="pt")``
    gives ``input_ids``/``attention_mask`` and ``pixel_values``. ``MRLAlignModel.save_pretrained`` saves the one
    stored as ``model.processor`` next to the weights and ``from_pretrained`` loads it back."""

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    def save_pretrained(self, save_directory, **kwargs):
        """Saves the tokenizer padding on the right, as ``MRLAlignModel`` reads texts (a text tower with absolute
        positions counts left padding as positions)."""
        tokenizer = self.tokenizer
        self.tokenizer = right_padding(tokenizer)
        try:
            return super().save_pretrained(save_directory, **kwargs)
        finally:
            self.tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        if not any("padding_side" in (kwargs.get(group) or {}) for group in ("text_kwargs", "common_kwargs")):
            kwargs.setdefault("padding_side", "right")  # as the evaluators pad, whatever the tokenizer says
        return super().__call__(*args, **kwargs)


class MRLAlignPreTrainedModel(MatryoshkaPreTrainedMixin, PreTrainedModel):
    config_class = MRLAlignConfig
    config: MRLAlignConfig
    base_model_prefix = "mrl_align"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # What the towers support decides (transformers checks each tower's class when it is built).
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _no_split_modules = []  # transformers adds each tower's own

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MRLAlignModel):
            init.constant_(module.logit_scale, math.log(1.0 / self.config.temperature_init_value))

    def _load_extra_files(self, path, kwargs) -> None:
        """``from_pretrained`` also loads the ``MRLAlignProcessor`` saved next to the weights (if any) as
        ``model.processor``, under the weights' read lock. Matryoshka kwargs (``truncate_dim=64``) override the saved
        config."""
        self.config.validate_matryoshka()
        self.logit_scale.requires_grad_(self.config.learnable_temperature)  # loading replaced the parameter
        self.processor = _try_load_processor(path, kwargs)

    def _save_extra_files(self, save_directory):
        """``save_pretrained`` (atomic, see ``mrl_hf.saving``) also saves ``model.processor`` when there is one."""
        if getattr(self, "processor", None) is not None:
            self.processor.save_pretrained(save_directory)


def _try_load_processor(path, kwargs):
    keep = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only", "subfolder") if k in kwargs}
    folder = os.path.join(str(path), kwargs.get("subfolder", ""))
    if os.path.isdir(folder) and not any(os.path.isfile(os.path.join(folder, name))
                                         for name in ("processor_config.json", "preprocessor_config.json")):
        return None
    try:
        return MRLAlignProcessor.from_pretrained(path, **keep)
    except (OSError, ValueError, TypeError):  # no processor files there
        return None


class MRLAlignModel(MRLAlignPreTrainedModel):
    """Image and text towers with Matryoshka projections trained by the nested contrastive loss.

    ``get_text_features(input_ids, attention_mask, truncate_dim=)`` / ``get_image_features(pixel_values,
    truncate_dim=)`` give embeddings (first ``truncate_dim`` features, normalised after slicing if asked).
    ``forward(input_ids=, pixel_values=, return_loss=True)`` returns ``MRLAlignOutput``. Build from plain
    checkpoints with ``MRLAlignModel.from_text_vision_pretrained(text, vision, **config_kwargs)``.
    """

    # the loss is a mean over the global batch's pairs, not a sum over labelled items (the Trainer would otherwise
    # take forward's **kwargs for loss kwargs)
    accepts_loss_kwargs = False

    def __init__(self, config: MRLAlignConfig):
        super().__init__(config)
        config.validate_matryoshka()
        self.text_model = build_backbone(config.text_config)
        self.vision_model = build_image_backbone(config.vision_config, config.vision_pooling)
        text_args = inspect.signature(self.text_model.forward).parameters
        self._text_takes = {name for name in ("token_type_ids", "use_cache") if name in text_args}
        self._vision_prefix_tokens = prefix_tokens(self.vision_model)
        self.text_projection = nn.Linear(text_hidden_size(config.text_config), config.projection_dim, bias=False)
        self.visual_projection = nn.Linear(image_width(config.vision_config), config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.temperature_init_value)),
                                        requires_grad=config.learnable_temperature)
        self.processor = None
        self.post_init()

    @property
    def temperature(self) -> torch.Tensor:
        """``1 / exp(logit_scale)``, with ``exp(logit_scale)`` capped at ``config.max_logit_scale``."""
        scale = self.logit_scale if self.config.learnable_temperature else self.logit_scale.detach()
        return 1.0 / scale.exp().clamp(max=self.config.max_logit_scale)

    # ---- towers -----------------------------------------------------------------------------------------------
    def _text_embeds(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a (batch, seq_len) tensor of token ids, got "
                             f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}; "
                             "tokenize with the processor / tokenizer (return_tensors='pt').")
        if 0 in input_ids.shape:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: an empty batch; skip empty batches "
                             "(e.g. dataloader_drop_last=True).")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        kwargs = {"position_ids": position_ids} if position_ids is not None else {}
        if token_type_ids is not None and "token_type_ids" in self._text_takes:
            kwargs["token_type_ids"] = token_type_ids  # tokenizers give them to families that have none
        if "use_cache" in self._text_takes:
            kwargs["use_cache"] = False  # a decoder would otherwise build a key/value cache
        hidden = self.text_model(input_ids, attention_mask=attention_mask, return_dict=True, **kwargs).last_hidden_state
        return self.text_projection(pool(hidden, attention_mask, self.config.text_pooling))

    def _image_embeds(self, pixel_values):
        vc = self.config.vision_config
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or pixel_values.shape[1] != vc.num_channels:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a float tensor (batch, {vc.num_channels}, height, width), got "
                             f"{shape}; use the processor, or match vision_config.num_channels={vc.num_channels}.")
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values is an empty batch (0 images); skip empty batches "
                             "(e.g. dataloader_drop_last=True).")
        if pixel_values.is_floating_point():  # the processor gives float32; a bf16 tower's convolutions need its dtype
            pixel_values = pixel_values.to(self.visual_projection.weight.dtype)
        out = self.vision_model(pixel_values, return_dict=True)
        return self.visual_projection(pool_image(out, self.config.vision_pooling, self._vision_prefix_tokens))

    def _truncate(self, embeds, truncate_dim, normalize):
        dim = self.config.truncate_dim if truncate_dim is None else truncate_dim
        normalize = self.config.normalize_embeddings if normalize is None else normalize
        return truncate_embeddings(embeds, dim, normalize=normalize)

    def _check_dim(self, truncate_dim):
        dim = self.config.truncate_dim if truncate_dim is None else truncate_dim
        if dim is not None:  # fail before running the tower
            validate_dim(dim, self.config.projection_dim, name="truncate_dim")

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                          truncate_dim: int | None = None, normalize: bool | None = None) -> torch.Tensor:
        """Text embeddings ``(batch, truncate_dim)``: the first ``truncate_dim`` features (default
        ``config.truncate_dim``; None = all), L2-normalised after slicing if ``normalize`` (default
        ``config.normalize_embeddings``)."""
        self._check_dim(truncate_dim)
        return self._truncate(self._text_embeds(input_ids, attention_mask, token_type_ids, position_ids),
                              truncate_dim, normalize)

    def get_image_features(self, pixel_values: torch.Tensor, truncate_dim: int | None = None,
                           normalize: bool | None = None) -> torch.Tensor:
        """Image embeddings ``(batch, truncate_dim)``; ``truncate_dim`` and ``normalize`` as in ``get_text_features``."""
        self._check_dim(truncate_dim)
        return self._truncate(self._image_embeds(pixel_values), truncate_dim, normalize)

    # ---- forward ----------------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        return_loss: bool = True,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MRLAlignOutput:
        """With ``return_loss=True`` (default, what ``Trainer`` uses) ``input_ids`` and ``pixel_values`` must be
        paired: row i of each is one (image, caption) pair. With ``return_loss=False`` any numbers of images and
        texts (or only one of them) may be given, e.g. images against class prompts for zero-shot."""
        if kwargs:  # options of a single model (output_hidden_states) or a typo (retrun_loss) did nothing
            raise TypeError(f"MRLAlignModel.forward got unexpected keyword arguments {sorted(kwargs)}; it takes "
                            "input_ids, pixel_values, attention_mask, token_type_ids, position_ids, return_loss and "
                            "return_dict (run model.text_model / model.vision_model for a tower's hidden states).")
        if return_loss:
            missing = [n for n, v in (("pixel_values", pixel_values), ("input_ids", input_ids)) if v is None]
            if missing:
                raise ValueError(f"return_loss=True needs both input_ids and pixel_values, but {' and '.join(missing)} "
                                 "is missing; pass both (paired rows), or return_loss=False / get_text_features / "
                                 "get_image_features for one modality.")
        image_embeds = self._image_embeds(pixel_values) if pixel_values is not None else None
        text_embeds = (self._text_embeds(input_ids, attention_mask, token_type_ids, position_ids)
                       if input_ids is not None else None)
        loss = per_dim = None
        if return_loss:
            if image_embeds.shape[0] != text_embeds.shape[0]:
                raise ValueError(f"got {image_embeds.shape[0]} images but {text_embeds.shape[0]} texts; the contrastive "
                                 "loss needs one caption per image (row i of each is a pair). For images against a "
                                 "different number of texts use return_loss=False.")
            images, texts = image_embeds, text_embeds
            if self.config.gather_across_processes:
                images, texts = all_gather_with_grad(images), all_gather_with_grad(texts)
            loss, per_dim, _ = nested_contrastive_loss(
                images, texts, self.config.nesting_list, self.temperature, self.config.relative_importance,
                symmetric=True, precisions=self.config.matryoshka_precisions,
                quantization_weight=self.config.quantization_weight, binary_surrogate=self.config.binary_surrogate)
        nested_i2t = nested_t2i = None
        if image_embeds is not None and text_embeds is not None:
            sims = nested_cosine_similarities(image_embeds, text_embeds, self.config.nesting_list) / self.temperature
            nested_i2t = tuple(sims.unbind(0))
            nested_t2i = tuple(s.T for s in nested_i2t)
        out = MRLAlignOutput(
            loss=loss, per_dim_losses=per_dim,
            logits_per_image=nested_i2t[-1] if nested_i2t else None,
            logits_per_text=nested_t2i[-1] if nested_t2i else None,
            nested_logits_per_image=nested_i2t, nested_logits_per_text=nested_t2i,
            text_embeds=text_embeds, image_embeds=image_embeds,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return out if return_dict else out.to_tuple()

    # ---- building from plain checkpoints ------------------------------------------------------------------------
    @classmethod
    def from_text_vision_pretrained(cls, text_model, vision_model, **config_kwargs) -> "MRLAlignModel":
        """A dual encoder whose towers are copied from plain checkpoints; projections and temperature are new.

        ``text_model``: any text model (``BertModel`` such as all-MiniLM-L6-v2, ``XLMRobertaModel``, a model with a
        task head such as ``BertForMaskedLM``, an ``MRLBertModel`` / ``MRLModelForTextEmbedding``, ...) or its Hub id /
        local path. ``vision_model``: any vision model (``ViTModel``, ``Dinov2Model``, ``ConvNextModel``, a classifier
        built on one, whose head is dropped, ...) or its Hub id / local path. ``config_kwargs`` go to
        ``MRLAlignConfig`` (``projection_dim``, ``nesting_list``, ``text_pooling``, ``vision_pooling``, ...).
        """
        text_base = _base_model(text_model, "text_model")
        vision_base = _base_model(vision_model, "vision_model")
        config = MRLAlignConfig(text_config=_plain_config(text_base.config, type(text_base).config_class),
                                vision_config=_plain_config(vision_base.config, type(vision_base).config_class),
                                **config_kwargs)
        model = cls(config)
        for name, tower, base in (("text", model.text_model, text_base), ("vision", model.vision_model, vision_base)):
            missing, unexpected = tower.load_state_dict(base.state_dict(), strict=False)
            unexpected = [k for k in unexpected if not k.startswith("pooler.")]
            if missing or unexpected:
                raise ValueError(f"the {name} checkpoint does not fit the {name} tower: missing {missing}, "
                                 f"unexpected {unexpected}.")
        return model.eval()  # like from_pretrained; Trainer switches to train mode


def _base_model(model, name):
    """The plain transformers base model inside ``model`` (a path / Hub id is loaded with ``AutoModel``)."""
    if isinstance(model, (str, os.PathLike)):
        model = AutoModel.from_pretrained(model)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(f"{name} must be a transformers model or a checkpoint path / Hub id, got {type(model).__name__}.")
    for module in (getattr(model, "backbone", None), getattr(model, "base_model", None), model):
        if isinstance(module, PreTrainedModel) and not type(module).__module__.startswith("mrl_hf."):
            return module
    raise TypeError(f"{name}: no plain transformers model inside the {type(model).__name__}.")


def _plain_config(config, plain_class):
    """The backbone's own config class (drops Matryoshka fields of an mrl_hf config)."""
    if type(config) is plain_class:
        return config
    fields = {f.name for f in dataclasses.fields(plain_class)} - set(MATRYOSHKA_KEYS)
    values = {k: v for k, v in config.to_dict().items() if k in fields}
    return plain_class(**values)


AutoConfig.register(MRLAlignConfig.model_type, MRLAlignConfig, exist_ok=True)
AutoModel.register(MRLAlignConfig, MRLAlignModel, exist_ok=True)
AutoProcessor.register(MRLAlignConfig, MRLAlignProcessor, exist_ok=True)
