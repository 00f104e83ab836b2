"""MRL BERT: text embeddings (``MRLBertModel``) and masked language modelling (``MRLBertForMaskedLM``).

Both wrap transformers' ``BertModel`` under the attribute ``bert`` (``base_model_prefix``), so any plain BERT
checkpoint (a bare ``BertModel`` such as all-MiniLM-L6-v2, or a ``BertForMaskedLM``) initialises the encoder
and only the new parts (projection, MLM head bias) are reported as newly initialised.

How the MLM head is nested: BERT's head is ``transform`` (dense + GELU + LayerNorm on the full hidden vector)
followed by a decoder tied to the input word embeddings ``E``. The transform runs once on the full vector,
unchanged; the nesting is on its output ``t``: the logits at size ``m`` are ``t[:m] @ E[:, :m].T + b``. Because
the decoder *is* the word-embedding matrix, every size shares it: MRL for MLM reduces to MRL-E (paper, Sec. 3).
The vocabulary loss is computed only at masked positions (rows whose label is not -100).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    BertConfig,
    BertModel,
)
from transformers import initialization as init
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform, BertPreTrainedModel
from transformers.utils import ModelOutput

from ..adaptor import MatryoshkaAdaptor, check_task, has_asymmetric_adaptor
from ..config import MatryoshkaConfigMixin
from ..heads import MatryoshkaHead
from ..nesting import halving_nesting_list, validate_dim
from .base import MatryoshkaPreTrainedMixin
from .masked_lm import MRLMaskedLMOutput, masked_lm_accuracy, nested_masked_lm  # noqa: F401  (re-exported)
from .text_encode import TextEncodeMixin
from .text_common import (
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

POOLING_MODES = ("mean", "cls")  # last_token pooling: MRLModelForTextEmbedding


@strict
class MRLBertConfig(MatryoshkaConfigMixin, BertConfig):
    """``BertConfig`` plus the Matryoshka fields and the embedding settings.

    pooling: ``"mean"`` (masked mean of the last hidden states, as sentence-transformers models use) or ``"cls"``.
    embedding_dim: size of an optional linear projection after pooling; ``None`` keeps ``hidden_size``.
    contrastive_temperature: temperature of the nested InfoNCE loss used when (anchor, positive) pairs are given.
    adaptor: config of a ``mrl_hf.adaptor.MatryoshkaAdaptor`` applied after pooling (set by ``attach_adaptor``).
    gather_across_processes: in a multi-process run, contrast against the global batch's candidates (every
        process's positives/negatives), so N processes train exactly like one process on the global batch.
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

    model_type = "mrl_bert"
    # Outputs the Trainer's evaluation loop does not collect as predictions (per-dim losses become eval_loss_dim_*).
    keys_to_ignore_at_inference = ["per_dim_losses", "last_hidden_state", "hidden_states", "attentions"]

    pooling: str = "mean"
    embedding_dim: int | None = None
    contrastive_temperature: float = 0.05
    adaptor: dict | None = None
    gather_across_processes: bool = True
    embed_duplicates_once: bool = False
    prompts: dict[str, str] | None = None
    default_prompt_name: str | None = None

    @property
    def matryoshka_embedding_dim(self) -> int:
        return self.embedding_dim if self.embedding_dim is not None else self.hidden_size

    def __post_init__(self, **kwargs):
        derived = self.nesting_list is None
        super().__post_init__(**kwargs)
        self._derived_nesting_list = list(self.nesting_list) if derived else None

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.pop("_derived_nesting_list", None)
        return out

    def validate_matryoshka(self) -> None:
        # A nesting list derived from hidden_size (e.g. a plain BERT config) follows a later embedding_dim=...
        derived = getattr(self, "_derived_nesting_list", None)
        if derived is not None and self.nesting_list == derived and derived[-1] != self.matryoshka_embedding_dim:
            dim = self.matryoshka_embedding_dim
            self.nesting_list = self._derived_nesting_list = halving_nesting_list(dim, min_dim=min(8, dim))
        if self.pooling not in POOLING_MODES:
            raise ValueError(f"pooling={self.pooling!r} is not supported; choose one of {POOLING_MODES}.")
        if self.embedding_dim is not None and (isinstance(self.embedding_dim, bool) or self.embedding_dim < 1):
            raise ValueError(f"embedding_dim={self.embedding_dim!r} must be an int >= 1 (or None for hidden_size).")
        if not self.contrastive_temperature > 0:
            raise ValueError(f"contrastive_temperature={self.contrastive_temperature} must be > 0.")
        check_prompts(self.prompts, self.default_prompt_name)
        super().validate_matryoshka()


@dataclass
class MRLBertEmbeddingOutput(ModelOutput):
    """``embeddings``: the full pooled (and projected) vector, never normalised, shape ``(batch, d)``.
    ``truncated_embeddings``: its first ``truncate_dim`` features, L2-normalised when ``normalize`` is on.
    ``loss`` / ``per_dim_losses``: nested contrastive loss when positives are given (``per_dim_losses[i]``
    belongs to ``config.nesting_list[i]``)."""

    loss: torch.FloatTensor | None = None
    per_dim_losses: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    truncated_embeddings: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class MRLBertPreTrainedModel(MatryoshkaPreTrainedMixin, BertPreTrainedModel):
    config_class = MRLBertConfig
    config: MRLBertConfig
    base_model_prefix = "bert"
    _plain_model_types = ("bert",)
    _class_for_any_family = "MRLModelForTextEmbedding (embeddings) or MRLModelForMaskedLM (masked LM)"
    # parts of plain BERT checkpoints that these models do not use: the pooler, another task's head
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)pooler\.", r"^cls\.seq_relationship\.", r"^classifier\."]
    # The contrastive loss is a mean over the (global) batch: the Trainer must average it over gradient accumulation
    # steps. The masked LM overrides this: it takes num_items_in_batch, as BertForMaskedLM does.
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MRLBertLMPredictionHead):
            init.zeros_(module.bias)
        elif isinstance(module, MatryoshkaHead) and module.efficient:
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)

    def _load_extra_files(self, path, kwargs) -> None:
        """``from_pretrained`` also loads the tokenizer saved next to the weights (if any) as ``model.tokenizer``."""
        self.tokenizer = try_load_tokenizer(path, kwargs)

    def _save_extra_files(self, save_directory):
        """``save_pretrained`` (atomic, see ``mrl_hf.saving``) also saves ``model.tokenizer`` when there is one."""
        if getattr(self, "tokenizer", None) is not None:
            right_padding(self.tokenizer).save_pretrained(save_directory)


class MRLBertModel(TextEncodeMixin, MRLBertPreTrainedModel):
    """BERT text embeddings trained so that every prefix in ``config.nesting_list`` is an embedding.

    ``forward(input_ids, attention_mask)`` returns ``MRLBertEmbeddingOutput``. With ``positive_input_ids``
    (and optionally ``negative_input_ids``) it also returns the nested InfoNCE loss with in-batch negatives
    (each prefix L2-normalised on its own), so ``MRLTrainer`` fine-tunes on (anchor, positive[, negative])
    batches from ``mrl_hf.data.collator.PairCollator``. ``encode(texts)`` works like sentence-transformers' ``encode``.
    """

    def __init__(self, config: MRLBertConfig):
        super().__init__(config)
        config.validate_matryoshka()
        self.bert = BertModel(config, add_pooling_layer=False)
        self.projection = (
            nn.Linear(config.hidden_size, config.embedding_dim) if config.embedding_dim is not None else None
        )
        self.adaptor = MatryoshkaAdaptor(**config.adaptor) if config.adaptor else None
        self.tokenizer = None
        self.post_init()

    @classmethod
    def _config_of_plain_checkpoint(cls, path, kwargs):
        """A plain checkpoint that is a sentence-transformers model pools as its ``Pooling`` module says, unless
        ``pooling=`` is given (``text_common.sentence_transformers_pooling``)."""
        pooling = sentence_transformers_pooling(path, kwargs, cls.__name__, POOLING_MODES)
        add_sentence_transformers_prompts(path, kwargs)
        config = super()._config_of_plain_checkpoint(path, kwargs)
        if config is not None and pooling is not None:
            config.pooling = pooling
        return config

    def get_input_embeddings(self):
        return self.bert.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.bert.embeddings.word_embeddings = value

    def _sync_config(self):
        # an adaptor changed after attach_adaptor (e.g. set_query_mean) must be rebuilt as it is now on load
        self.config.adaptor = None if self.adaptor is None else self.adaptor.init_kwargs()

    def _save_extra_files(self, save_directory):
        """Also make the folder a sentence-transformers model: ``SentenceTransformer(folder)`` (once
        ``mrl_hf.modeling`` is imported) reads this model's ``embeddings`` output (pooling, projection and adaptor
        included) and cuts it to ``config.truncate_dim``. Skipped without a tokenizer, which sentence-transformers
        needs."""
        super()._save_extra_files(save_directory)
        if self.tokenizer is None:
            return
        files = sentence_transformers_files(self.config, default_max_length(self.tokenizer, self.config))
        for name, content in files.items():
            with open(os.path.join(save_directory, name), "w", encoding="utf8") as handle:
                json.dump(content, handle, indent=2)
                handle.write("\n")

    def _embed(self, input_ids, attention_mask=None, token_type_ids=None, inputs_embeds=None, task=None, **kwargs):
        check_nonempty(input_ids if input_ids is not None else inputs_embeds)
        if attention_mask is None:  # every position counts in the mean pooling
            shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
            device = input_ids.device if input_ids is not None else inputs_embeds.device
            attention_mask = torch.ones(shape, dtype=torch.long, device=device)
        kwargs.pop("return_dict", None)  # the encoder's output is read by name below
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
        pooled = pool(out.last_hidden_state, attention_mask, self.config.pooling)
        if self.projection is not None:
            pooled = self.projection(pooled)
        if self.adaptor is not None:
            pooled = self.adaptor(pooled, task)
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
        task: str | None = None,
        **kwargs,
    ) -> MRLBertEmbeddingOutput | tuple:
        pairs = positive_input_ids is not None and return_loss
        if pairs and has_asymmetric_adaptor(self):
            raise ValueError("the adaptor is asymmetric (queries centred on their own mean); the pair loss would embed "
                             "every text as a document. Train the encoder without it, then attach it.")
        embed = (partial(embed_each_text_once, self._embed) if pairs and self.config.embed_duplicates_once
                 else self._embed)
        embeddings, out = embed(input_ids, attention_mask, token_type_ids=token_type_ids, position_ids=position_ids,
                                inputs_embeds=inputs_embeds, task=check_task(task), **kwargs)
        loss = per_dim = None
        if pairs:
            candidates = [embed(positive_input_ids, positive_attention_mask)[0]]
            if negative_input_ids is not None:
                candidates.append(embed(negative_input_ids, negative_attention_mask)[0])
            loss, per_dim = pair_contrastive_loss(self.config, embeddings, candidates)
        output = MRLBertEmbeddingOutput(
            loss=loss,
            per_dim_losses=per_dim,
            embeddings=embeddings,
            truncated_embeddings=self._truncate(embeddings, truncate_dim, normalize),
            last_hidden_state=out.last_hidden_state,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def _embed_batch(self, inputs: dict, truncate_dim, normalize, task) -> torch.Tensor:
        return self(**inputs, truncate_dim=truncate_dim, normalize=normalize, task=task).truncated_embeddings


class MRLBertLMPredictionHead(nn.Module):
    """BERT's MLM head with an MRL-E decoder: attribute names match ``BertLMPredictionHead`` so plain BERT
    MLM checkpoints load into it. ``forward`` takes the arguments of ``MatryoshkaHead.forward`` (logits at every
    size, at one ``dim``, or the nested loss with ``labels``) and applies the transform first."""

    def __init__(self, config: MRLBertConfig):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = MatryoshkaHead(config.nesting_list, config.vocab_size, efficient=True, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor, labels: torch.Tensor | None = None, **decoder_kwargs):
        return self.decoder(self.transform(hidden_states), labels, **decoder_kwargs)


class MRLBertOnlyMLMHead(nn.Module):
    def __init__(self, config: MRLBertConfig):
        super().__init__()
        self.predictions = MRLBertLMPredictionHead(config)

    def forward(self, hidden_states: torch.Tensor, labels: torch.Tensor | None = None, **decoder_kwargs):
        return self.predictions(hidden_states, labels, **decoder_kwargs)


class MRLBertForMaskedLM(MRLBertPreTrainedModel):
    """BERT masked LM whose prediction at every size ``m`` in ``nesting_list`` uses only ``t[:m]`` (MRL-E, decoder
    tied to the word embeddings). Loss: ``sum_m c_m * CE_m`` over masked tokens; see the module docstring.

    Like ``BertForMaskedLM`` it takes ``num_items_in_batch`` (the Trainer's count of masked tokens over all gradient
    accumulation steps and processes), so GA and DDP train on the token-weighted loss of the whole global batch.
    """

    _tied_weights_keys = {
        "cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
        "cls.predictions.decoder.bias": "cls.predictions.bias",
    }
    accepts_loss_kwargs = True

    def __init__(self, config: MRLBertConfig):
        super().__init__(config)
        config.validate_matryoshka()
        if config.matryoshka_embedding_dim != config.hidden_size:
            raise ValueError(
                f"MRLBertForMaskedLM nests the hidden size ({config.hidden_size}), so embedding_dim must be None "
                f"(got {config.embedding_dim}); use MRLBertModel for a projected embedding."
            )
        if config.precisions is not None:  # as MRLModelForMaskedLM: the loss trains token predictions, no codes
            raise ValueError(f"precisions={config.precisions!r}: quantisation-aware training is for embeddings; a "
                             "masked LM is trained on token predictions only. Leave precisions unset (loading a "
                             "quantisation-aware checkpoint: from_pretrained(..., precisions=None)).")
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = MRLBertOnlyMLMHead(config)
        self.tokenizer = None
        self.post_init()

    def get_input_embeddings(self):
        return self.bert.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.bert.embeddings.word_embeddings = value

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings

    def decoder_features(self, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
        """The decoder's input at every position ``(batch, seq, hidden)``: the head transform of the last hidden
        states (``masked_lm_accuracy`` scores any size from it)."""
        hidden = self.bert(input_ids, attention_mask=attention_mask, return_dict=True, **kwargs).last_hidden_state
        return self.cls.predictions.transform(hidden)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        truncate_dim: int | None = None,
        return_logits: bool | None = None,
        smoothing: float = 0.0,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MRLMaskedLMOutput | tuple:
        """``smoothing``: label smoothing as in ``torch.nn.CrossEntropyLoss``; ``MRLTrainer`` passes the Trainer's
        ``label_smoothing_factor`` here (not named ``label_...``: the Trainer would take it for a label column).
        ``num_items_in_batch``: see the class docstring."""
        check_nonempty(input_ids if input_ids is not None else inputs_embeds)
        kwargs.pop("return_dict", None)
        dim = truncate_dim if truncate_dim is not None else self.config.truncate_dim
        if dim is not None:  # fail before running the model, naming the argument
            validate_dim(dim, self.config.matryoshka_embedding_dim, name="truncate_dim")
        out = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                        position_ids=position_ids, inputs_embeds=inputs_embeds, return_dict=True, **kwargs)
        loss, per_dim, logits, predictions = nested_masked_lm(
            self.cls, out.last_hidden_state, labels, self.config, truncate_dim=truncate_dim,
            return_logits=return_logits, smoothing=smoothing, num_items_in_batch=num_items_in_batch,
            training=self.training)
        output = MRLMaskedLMOutput(loss=loss, per_dim_losses=per_dim, logits=logits, nested_predictions=predictions,
                                   hidden_states=out.hidden_states, attentions=out.attentions)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


AutoConfig.register(MRLBertConfig.model_type, MRLBertConfig, exist_ok=True)
AutoModel.register(MRLBertConfig, MRLBertModel, exist_ok=True)
AutoModelForMaskedLM.register(MRLBertConfig, MRLBertForMaskedLM, exist_ok=True)
