"""Matryoshka text embeddings on any ``transformers`` text backbone (``MRLModelForTextEmbedding``).

The backbone is whatever ``AutoModel.from_config(config.backbone_config)`` builds (BERT, XLM-RoBERTa, ModernBERT,
DeBERTa-v2, MPNet, Qwen3, Llama, ...). Its last hidden states are pooled (masked mean, first token or last token),
optionally projected to ``embedding_dim``, and trained with the nested InfoNCE loss so that every prefix in
``config.nesting_list`` is an embedding.

Loading a plain checkpoint: ``MRLModelForTextEmbedding.from_pretrained(folder_or_id, nesting_list=..., pooling=...)``
reads the checkpoint's own config as ``backbone_config`` and loads its weights into ``backbone``:

- a bare base model (``BertModel``, ``Qwen3Model``, a sentence-transformers folder; keys ``embeddings.*``,
  ``layers.*``): ``base_model_prefix = "backbone"``, so transformers adds the ``backbone.`` prefix to every key;
- a model with a task head (``BertForMaskedLM``, ``XLMRobertaForMaskedLM``, ``Qwen3ForCausalLM``; keys ``bert.*``,
  ``roberta.*``, ``model.*``): the backbone's own prefix is renamed to ``backbone.`` while loading (a ``key_mapping``
  that is not kept for saving, so the model's own saves stay in its ``backbone.*`` layout); the head's weights are
  reported as unused, as transformers does for ``BertModel.from_pretrained(<a BertForMaskedLM>)``.

Only the projection (when ``embedding_dim`` is set) is new; a plain checkpoint whose keys fit no backbone weight is
refused instead of silently giving a randomly initialised encoder.
"""
from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass
from functools import partial

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

from ..config import MatryoshkaConfigMixin
from ..nesting import validate_dim
from .text_encode import TextEncodeMixin
from .text_common import (
    POOLING_MODES,
    add_sentence_transformers_prompts,
    check_nonempty,
    check_prompts,
    default_max_length,
    embed_each_text_once,
    pair_contrastive_loss,
    pool,
    sentence_transformers_files,
    right_padding,
    sentence_transformers_pooling,
    try_load_tokenizer,
)
from .wrapped import WrappedModelMixin, without_pooler_kwargs

BACKBONE_PREFIX = "backbone"


def text_hidden_size(config: PretrainedConfig) -> int:
    """The width of a text model's hidden states (``hidden_size``, or ``d_model`` / ``dim`` / ``n_embd``)."""
    text = config.get_text_config()
    for key in ("hidden_size", "d_model", "dim", "n_embd"):
        value = getattr(text, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ValueError(f"cannot tell the hidden size of the {config.model_type!r} backbone (its config has no "
                     "hidden_size / d_model); it is not a text model that can be pooled.")


@strict
class MRLTextEmbeddingConfig(MatryoshkaConfigMixin, PretrainedConfig):
    """Config of ``MRLModelForTextEmbedding``: the backbone's config plus the Matryoshka and embedding settings.

    backbone_config: the config of any text model ``AutoModel`` can build (a ``PretrainedConfig`` or a dict with its
        ``model_type``; re-created with the backbone's own config class on load). Default: BERT-base.
    pooling: ``"mean"`` (masked mean of the last hidden states), ``"cls"`` (the first attended token) or
        ``"last_token"`` (the last attended token, for decoders such as Qwen3 / Llama). Each finds its tokens from the
        mask, whatever the padding side; a backbone with absolute positions (BERT, GPT-2) counts left padding as
        positions, so ``encode`` pads on the right, and so should batches passed to ``forward``.
    embedding_dim: size of an optional linear projection after pooling; ``None`` keeps the backbone's hidden size.
    contrastive_temperature: temperature of the nested InfoNCE loss used when (anchor, positive) pairs are given.
    gather_across_processes: in a multi-process run, contrast against the global batch's candidates.
    embed_duplicates_once: ``True`` embeds each distinct text of a batch of pairs once and reuses its embedding for
        every copy: the same loss and gradients for less work when batches repeat texts (several queries with one
        answer), except that in training the copies share one dropout mask. ``False`` (default) embeds every row.
    prompts / default_prompt_name: texts put before the inputs, as in sentence-transformers (e5-style
        ``{"query": "query: ", "document": "passage: "}``): ``encode_query`` uses ``"query"``, ``encode_document``
        ``"document"`` (as sentence-transformers loads them), ``encode`` the ``default_prompt_name``'s (none when
        None); read from a sentence-transformers folder on load and written back on save. ``recipes.finetune``
        (``mrl-hf train``) puts them into its training pairs; a collator of your own takes texts as given
        (``mrl_hf.recipes.with_prompts``).
    """

    model_type = "mrl_text_embedding"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}
    # Outputs the Trainer's evaluation loop does not collect as predictions (per-dim losses become eval_loss_dim_*).
    keys_to_ignore_at_inference = ["per_dim_losses", "last_hidden_state", "hidden_states", "attentions"]

    backbone_config: dict | PretrainedConfig | None = None
    pooling: str = "mean"
    embedding_dim: int | None = None
    contrastive_temperature: float = 0.05
    gather_across_processes: bool = True
    embed_duplicates_once: bool = False
    prompts: dict[str, str] | None = None
    default_prompt_name: str | None = None

    def __post_init__(self, **kwargs):
        if isinstance(self.backbone_config, dict) and not self.backbone_config.get("model_type"):
            raise ValueError("backbone_config is a dict without 'model_type'; give the backbone's config "
                             "(AutoConfig.from_pretrained(...)) or a dict with its model_type, e.g. 'bert'.")
        if isinstance(self.backbone_config, MRLTextEmbeddingConfig):
            raise TypeError("backbone_config is itself an MRLTextEmbeddingConfig; give the plain backbone's config.")
        self._check_embedding_dim()  # before the default nesting list is derived from it
        super().__post_init__(**kwargs)

    def _check_embedding_dim(self) -> None:
        if self.embedding_dim is not None and (isinstance(self.embedding_dim, bool)
                                               or not isinstance(self.embedding_dim, int) or self.embedding_dim < 1):
            raise ValueError(f"embedding_dim={self.embedding_dim!r} must be an int >= 1 (or None for the backbone's "
                             "hidden size).")

    @property
    def backbone_hidden_size(self) -> int:
        return text_hidden_size(self.backbone_config)

    @property
    def matryoshka_embedding_dim(self) -> int:
        return self.embedding_dim if self.embedding_dim is not None else self.backbone_hidden_size

    def get_text_config(self, decoder=None, encoder=None) -> PretrainedConfig:
        """The backbone's text config: vocabulary size, hidden size and layers live there (``resize_token_embeddings``
        and other tools read and write them through this)."""
        return self.backbone_config.get_text_config(decoder=decoder, encoder=encoder)

    def validate_matryoshka(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling={self.pooling!r} is not supported; choose one of {POOLING_MODES}.")
        self._check_embedding_dim()
        if not self.contrastive_temperature > 0:
            raise ValueError(f"contrastive_temperature={self.contrastive_temperature} must be > 0.")
        if not isinstance(self.backbone_config, PretrainedConfig):
            raise TypeError(f"backbone_config must be a transformers config (or a dict with its model_type), got "
                            f"{type(self.backbone_config).__name__}.")
        if getattr(self.backbone_config, "is_encoder_decoder", False) or is_seq2seq_family(self.backbone_config):
            raise ValueError(f"the {self.backbone_config.model_type!r} backbone is an encoder-decoder model; "
                             "MRLModelForTextEmbedding pools the hidden states of an encoder or a decoder alone.")
        check_prompts(self.prompts, self.default_prompt_name)
        super().validate_matryoshka()


@dataclass
class MRLTextEmbeddingOutput(ModelOutput):
    """``embeddings``: the full pooled (and projected) vector, never normalised, shape ``(batch, d)``.
    ``truncated_embeddings``: its first ``truncate_dim`` features, L2-normalised when ``normalize`` is on.
    ``loss`` / ``per_dim_losses``: nested contrastive loss when positives are given (``per_dim_losses[i]``
    belongs to ``config.nesting_list[i]``). The same fields as ``MRLBertModel``'s output."""

    loss: torch.FloatTensor | None = None
    per_dim_losses: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    truncated_embeddings: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def is_seq2seq_family(config: PretrainedConfig) -> bool:
    """A family that is an encoder-decoder by default, even where this config says otherwise (T5EncoderModel saves
    ``is_encoder_decoder: false``, and AutoModel would still build the whole T5 with a random decoder)."""
    return getattr(type(config), "is_encoder_decoder", False) is True  # the class's default


def build_backbone(config: PretrainedConfig) -> PreTrainedModel:
    """``AutoModel.from_config(config)``, without the pooler of the families that have one: the embedding is pooled
    from the last hidden states."""
    return AutoModel.from_config(config, **without_pooler_kwargs(config))


class MRLTextEmbeddingPreTrainedModel(WrappedModelMixin, PreTrainedModel):
    config_class = MRLTextEmbeddingConfig
    config: MRLTextEmbeddingConfig
    base_model_prefix = BACKBONE_PREFIX
    input_modalities = ("text",)
    # What the backbone supports decides: transformers checks the backbone class itself when it is built, and falls
    # back to eager attention for a backbone without SDPA unless one was asked for by name.
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    supports_gradient_checkpointing = True
    # The poolers of plain checkpoints: the backbone is built without one (see ``build_backbone``).
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)pooler\."]
    # The contrastive loss is a mean over the (global) batch: the Trainer must average it over accumulation steps.
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        super()._init_weights(module)  # the backbone's own modules are initialised by the backbone's _init_weights
        if isinstance(module, MRLModelForTextEmbedding) and module.projection is not None:
            std = getattr(self.config.get_text_config(), "initializer_range", None) or 0.02
            init.normal_(module.projection.weight, mean=0.0, std=std)
            init.zeros_(module.projection.bias)

    # ---- loading (plain checkpoints: see mrl_hf/modeling/wrapped.py) ---------------------------------------------
    _plain_settings = frozenset({"nesting_list", "truncate_dim", "relative_importance", "normalize_embeddings",
                                 "pooling", "embedding_dim", "contrastive_temperature", "gather_across_processes",
                                 "embed_duplicates_once", "prompts", "default_prompt_name",
                                 "efficient", "precisions", "quantization_weight", "binary_surrogate"})

    @classmethod
    def _plain_checkpoint_config(cls, path, kwargs):
        """A plain checkpoint that is a sentence-transformers model pools as its ``Pooling`` module says, unless
        ``pooling=`` is given (``text_common.sentence_transformers_pooling``)."""
        pooling = sentence_transformers_pooling(path, kwargs, cls.__name__, POOLING_MODES)
        add_sentence_transformers_prompts(path, kwargs)
        plain = super()._plain_checkpoint_config(path, kwargs)
        if plain is not None and pooling is not None:
            plain[0].pooling = pooling
        return plain

    def _load_extra_files(self, path, kwargs) -> None:
        """The tokenizer saved next to the weights (if any) becomes ``model.tokenizer``."""
        self.tokenizer = try_load_tokenizer(path, kwargs)

    # ---- saving -------------------------------------------------------------------------------------------------
    def _save_extra_files(self, save_directory):
        """``save_pretrained`` (atomic, see ``mrl_hf.saving``) also saves ``model.tokenizer`` when there is one, and
        the files that make the folder a sentence-transformers model (whose output is this model's ``embeddings``,
        cut to ``config.truncate_dim``)."""
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is None:
            return
        right_padding(tokenizer).save_pretrained(save_directory)
        files = sentence_transformers_files(self.config, default_max_length(tokenizer, self.config))
        for name, content in files.items():
            with open(os.path.join(save_directory, name), "w", encoding="utf8") as handle:
                json.dump(content, handle, indent=2)
                handle.write("\n")


class MRLModelForTextEmbedding(TextEncodeMixin, MRLTextEmbeddingPreTrainedModel):
    """Text embeddings from any ``AutoModel`` text backbone, trained so that every prefix in ``config.nesting_list``
    is an embedding.

    ``forward(input_ids, attention_mask)`` returns ``MRLTextEmbeddingOutput``. With ``positive_input_ids`` (and
    optionally ``negative_input_ids``) it also returns the nested InfoNCE loss with in-batch negatives (each prefix
    L2-normalised on its own), so ``MRLTrainer`` fine-tunes it on batches from ``mrl_hf.data.collator.PairCollator``.
    ``encode(texts)`` works like sentence-transformers' ``encode``.

    Build one from a plain checkpoint with ``from_pretrained(path, nesting_list=[...], pooling=...)``, from a model
    in memory with ``from_backbone(model, ...)``, or from scratch with ``MRLModelForTextEmbedding(config)``.
    """

    _reads_stated_contract = True  # the sizes a plain checkpoint states are its embedding sizes

    def __init__(self, config: MRLTextEmbeddingConfig):
        super().__init__(config)
        config.validate_matryoshka()
        self.backbone = build_backbone(config.backbone_config)
        hidden = config.backbone_hidden_size
        self.projection = nn.Linear(hidden, config.embedding_dim) if config.embedding_dim is not None else None
        self.tokenizer = None
        forward_args = inspect.signature(self.backbone.forward).parameters
        if "input_ids" not in forward_args:
            raise ValueError(f"{type(self.backbone).__name__} takes no input_ids: it is not a text model "
                             "(vision and audio backbones are not supported yet).")
        language_model = getattr(self.backbone, "language_model", None) or getattr(self.backbone, "text_model", None)
        if hasattr(self.backbone, "get_text_features") or ("pixel_values" in forward_args and language_model is None):
            # dual encoders (CLIP, SigLIP, X-CLIP) and models that need the image (ViLT) run their vision side on
            # every call; vision-language decoders (LLaVA, Gemma 3, Idefics 3) take text alone and are fine
            raise ValueError(f"{type(self.backbone).__name__} is a text-and-image model that needs its images; "
                             "MRLModelForTextEmbedding takes a text model (use its text tower's config, e.g. "
                             "config.text_config), and MRLAlignModel trains a text and an image tower together.")
        self._backbone_takes = {name for name in ("token_type_ids", "use_cache") if name in forward_args}
        self.post_init()

    @classmethod
    def from_backbone(cls, backbone: PreTrainedModel, tokenizer=None, **config_kwargs) -> MRLModelForTextEmbedding:
        """An embedding model whose backbone weights are copied from ``backbone`` (a base model such as a ``BertModel``
        or ``Qwen3Model``, or a model with a task head, whose ``base_model`` is used); ``config_kwargs`` go to
        ``MRLTextEmbeddingConfig`` (``nesting_list``, ``pooling``, ``embedding_dim``, ...)."""
        base = getattr(backbone, "base_model", backbone)
        if not isinstance(base, PreTrainedModel):
            raise TypeError(f"backbone must be a transformers model, got {type(backbone).__name__}.")
        config = cls.config_class(backbone_config=base.config.to_dict(), **config_kwargs)
        model = cls(config)
        missing, unexpected = model.backbone.load_state_dict(base.state_dict(), strict=False)
        unexpected = [k for k in unexpected if not re.search(r"(^|\.)pooler\.", k)]
        if missing or unexpected:
            raise ValueError(f"the {type(base).__name__} does not fit the backbone: missing {missing}, "
                             f"unexpected {unexpected}.")
        model.tokenizer = tokenizer
        return model.to(base.dtype).eval()

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.set_input_embeddings(value)

    def _embed(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None, inputs_embeds=None,
               **kwargs):
        check_nonempty(input_ids if input_ids is not None else inputs_embeds)
        if attention_mask is None:  # every position counts
            shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
            device = input_ids.device if input_ids is not None else inputs_embeds.device
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        kwargs.pop("return_dict", None)  # the backbone's output is read by name below
        if token_type_ids is not None and "token_type_ids" in self._backbone_takes:
            kwargs["token_type_ids"] = token_type_ids  # tokenizers give them to families that have none (Qwen3, ...)
        if position_ids is not None:
            kwargs["position_ids"] = position_ids
        if "use_cache" in self._backbone_takes:
            kwargs.setdefault("use_cache", False)  # a decoder would otherwise build a key/value cache
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds,
                            return_dict=True, **kwargs)
        pooled = pool(out.last_hidden_state, attention_mask, self.config.pooling)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return pooled, out

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        positive_input_ids: torch.Tensor | None = None,
        positive_attention_mask: torch.Tensor | None = None,
        negative_input_ids: torch.Tensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        truncate_dim: int | None = None,
        normalize: bool | None = None,
        return_loss: bool = True,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MRLTextEmbeddingOutput | tuple:
        self._check_dim(truncate_dim)
        pairs = positive_input_ids is not None and return_loss
        embed = (partial(embed_each_text_once, self._embed) if pairs and self.config.embed_duplicates_once
                 else self._embed)
        embeddings, out = embed(input_ids, attention_mask, token_type_ids=token_type_ids, position_ids=position_ids,
                                inputs_embeds=inputs_embeds, **kwargs)
        loss = per_dim = None
        if pairs:
            candidates = [embed(positive_input_ids, positive_attention_mask)[0]]
            if negative_input_ids is not None:
                candidates.append(embed(negative_input_ids, negative_attention_mask)[0])
            loss, per_dim = pair_contrastive_loss(self.config, embeddings, candidates)
        output = MRLTextEmbeddingOutput(
            loss=loss,
            per_dim_losses=per_dim,
            embeddings=embeddings,
            truncated_embeddings=self._truncate(embeddings, truncate_dim, normalize),
            last_hidden_state=out.last_hidden_state,
            hidden_states=getattr(out, "hidden_states", None),
            attentions=getattr(out, "attentions", None),
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def _check_dim(self, truncate_dim):
        dim = truncate_dim if truncate_dim is not None else self.config.truncate_dim
        if dim is not None:  # fail before running the backbone
            validate_dim(dim, self.config.matryoshka_embedding_dim, name="truncate_dim")

    def _embed_batch(self, inputs: dict, truncate_dim, normalize, task) -> torch.Tensor:
        inputs = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return self(**inputs, truncate_dim=truncate_dim, normalize=normalize).truncated_embeddings


AutoConfig.register(MRLTextEmbeddingConfig.model_type, MRLTextEmbeddingConfig, exist_ok=True)
AutoModel.register(MRLTextEmbeddingConfig, MRLModelForTextEmbedding, exist_ok=True)
