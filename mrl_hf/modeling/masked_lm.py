"""Masked language modelling with an MRL-E decoder tied to the word embeddings, on any ``transformers`` masked-LM
family whose decoder is tied (BERT, RoBERTa, XLM-RoBERTa, ModernBERT, MPNet, DeBERTa-v2, DistilBERT, ELECTRA, ...):
``MRLModelForMaskedLM``. ``MRLBertForMaskedLM`` (``modeling/bert.py``) is the BERT-only class of earlier releases.

The family's own ``...ForMaskedLM`` is kept whole under ``mlm``, with its output embeddings (the decoder tied to the
input word embeddings ``E``) replaced by a ``NestedTiedDecoder`` that holds the same weight and bias under the same
names. The family's forward runs unchanged up to the decoder (its head transform: dense + activation + norm for
BERT/RoBERTa, ModernBERT's prediction head, ...); the decoder hands its input ``t`` back, and the logits at size ``m``
are ``t[:m] @ E[:, :m].T + b``: every size shares ``E``, so MRL for MLM is MRL-E (paper, Sec. 3). The loss is
``sum_m c_m * CE_m`` over the masked tokens only (labels != -100).

Weights sit under ``mlm.`` in the family's own layout (``mlm.roberta.*``, ``mlm.lm_head.*``), so a plain
``XLMRobertaForMaskedLM`` / ``ModernBertForMaskedLM`` checkpoint loads into it with nothing new, and a bare base model
(``RobertaModel``) with only the MLM head new.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Sequence

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

from ..config import MatryoshkaConfigMixin
from ..heads import MatryoshkaHead
from ..losses import MatryoshkaCrossEntropyLoss
from ..nesting import validate_dim
from .text_common import check_nonempty, try_load_tokenizer
from .wrapped import WrappedModelMixin, backbone_class

MLM_PREFIX = "mlm"


@dataclass
class MRLMaskedLMOutput(ModelOutput):
    """``loss``: ``sum_m c_m * CE_m`` over masked tokens; ``per_dim_losses[i]`` belongs to ``nesting_list[i]``.
    ``logits``: ``(batch, seq, vocab)`` at ``truncate_dim`` (full size by default); only computed without labels or
    with ``return_logits=True`` (a 30k-word vocabulary at every position is large).
    ``nested_predictions``: in eval mode with labels, ``(batch, seq, |M|)`` argmax token ids at every size for the
    masked positions (-100 elsewhere), so ``MRLTrainer``'s evaluation reports per-size MLM accuracy."""

    loss: torch.FloatTensor | None = None
    per_dim_losses: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    nested_predictions: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def nested_masked_lm(decoder, features, labels, config, *, truncate_dim=None, return_logits=None, smoothing=0.0,
                     num_items_in_batch=None, training=True):
    """``(loss, per_dim_losses, logits, nested_predictions)`` of an MRL-E masked LM (see ``MRLMaskedLMOutput``).

    ``decoder(x, labels, ...)`` / ``decoder(x, dim=m)`` behave like ``MatryoshkaHead``'s (BERT's head applies its
    transform first); ``features`` ``(batch, seq, d)`` are its inputs at every position."""
    loss = per_dim = predictions = logits = None
    if labels is not None:
        if labels.shape != features.shape[:2]:
            raise ValueError(f"labels must have shape {tuple(features.shape[:2])} (batch, seq), "
                             f"got {tuple(labels.shape)}.")
        masked = labels != -100
        want_preds = not training
        nested = decoder(
            features[masked], labels[masked],
            loss_fct=MatryoshkaCrossEntropyLoss(config.relative_importance, label_smoothing=smoothing),
            return_predictions=want_preds, num_items_in_batch=num_items_in_batch,
        )
        loss, per_dim = nested.loss, nested.per_dim_losses
        if want_preds:  # batch-first, so the Trainer can gather and pad it like the labels
            predictions = labels.new_full((*labels.shape, len(config.nesting_list)), -100)
            predictions[masked] = nested.predictions.T
    if labels is None or return_logits:
        dim = truncate_dim if truncate_dim is not None else config.truncate_dim
        logits = decoder(features, dim=dim or config.matryoshka_embedding_dim)
    return loss, per_dim, logits, predictions


@torch.no_grad()
def masked_lm_accuracy(model, batches, dims: Sequence[int]) -> dict[int, float]:
    """MLM accuracy (%) over masked tokens at each size in ``dims`` (any size in 1..d, since the decoder is MRL-E), e.g.
    to compare an MRL model with a plain one sliced (the paper's Table 7). ``model``: an ``MRLModelForMaskedLM`` or
    ``MRLBertForMaskedLM``; ``batches`` yields dicts with ``input_ids``, ``labels`` (-100 = not masked) and the
    model's other inputs (``attention_mask``, ``token_type_ids``, ``position_ids``)."""
    dims = [validate_dim(m, model.config.matryoshka_embedding_dim, name="dim") for m in dims]
    decoder = model.get_output_embeddings()
    was_training = model.training
    model.eval()
    correct = torch.zeros(len(dims))
    total = 0
    try:
        for batch in batches:
            batch = {k: v.to(model.device) for k, v in batch.items()}
            labels = batch["labels"]
            masked = labels != -100
            inputs = {k: batch[k] for k in ("attention_mask", "token_type_ids", "position_ids") if k in batch}
            features = model.decoder_features(batch["input_ids"], **inputs)[masked]  # sentence pairs: segment B too
            for i, m in enumerate(dims):
                correct[i] += (decoder(features, dim=m).argmax(-1) == labels[masked]).sum().cpu()
            total += int(masked.sum())
    finally:
        model.train(was_training)
    return {m: 100.0 * float(c) / max(total, 1) for m, c in zip(dims, correct)}


class NestedTiedDecoder(MatryoshkaHead):
    """An MRL-E ``MatryoshkaHead`` in place of a family's output embeddings (same ``weight`` / ``bias`` names, so the
    family's weight tying and checkpoints apply unchanged).

    Called as the family's own forward calls its decoder, ``decoder(t)`` returns ``t`` unchanged: the family model's
    ``logits`` output is then the decoder's input, from which ``MRLModelForMaskedLM`` computes the nested logits and
    loss (``decoder(t, labels, ...)``, ``decoder(t, dim=m)``, as ``MatryoshkaHead``)."""

    def forward(self, hidden, labels=None, **kwargs):
        if labels is None and not kwargs:
            return hidden
        return super().forward(hidden, labels, **kwargs)


def _decoder_width(config: PretrainedConfig) -> int:
    """Width of the decoder's input = of the word embeddings (ELECTRA / ALBERT factorise them: ``embedding_size``)."""
    text = config.get_text_config()
    for key in ("embedding_size", "hidden_size", "dim", "d_model"):
        value = getattr(text, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    raise ValueError(f"cannot tell the word-embedding width of the {config.model_type!r} model.")


@strict
class MRLMaskedLMConfig(MatryoshkaConfigMixin, PretrainedConfig):
    """Config of ``MRLModelForMaskedLM``: the masked-LM family's config plus the Matryoshka fields.

    backbone_config: the config of any family ``AutoModelForMaskedLM`` builds whose decoder is tied to the word
        embeddings (a ``PretrainedConfig`` or a dict with its ``model_type``). Default: BERT-base.
    nesting_list: sizes of the word-embedding width ``d`` (its last entry is ``d``); every size shares the decoder.
    truncate_dim: the size whose logits ``forward`` returns (default: ``d``).
    """

    model_type = "mrl_masked_lm"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="bert")}
    keys_to_ignore_at_inference = ["per_dim_losses", "logits", "hidden_states", "attentions"]

    backbone_config: dict | PretrainedConfig | None = None
    efficient: bool = True  # always: the decoder is tied to the word embeddings

    def __post_init__(self, **kwargs):
        if isinstance(self.backbone_config, dict) and not self.backbone_config.get("model_type"):
            raise ValueError("backbone_config is a dict without 'model_type'; give the masked LM's config "
                             "(AutoConfig.from_pretrained(...)) or a dict with its model_type, e.g. 'xlm-roberta'.")
        if isinstance(self.backbone_config, MRLMaskedLMConfig):
            raise TypeError("backbone_config is itself an MRLMaskedLMConfig; give the plain model's config.")
        super().__post_init__(**kwargs)

    @property
    def matryoshka_embedding_dim(self) -> int:
        return _decoder_width(self.backbone_config)

    def get_text_config(self, decoder=None, encoder=None) -> PretrainedConfig:
        """The family's config: vocabulary size and hidden size live there (``resize_token_embeddings`` uses it)."""
        return self.backbone_config.get_text_config(decoder=decoder, encoder=encoder)

    def validate_matryoshka(self) -> None:
        if not isinstance(self.backbone_config, PretrainedConfig):
            raise TypeError(f"backbone_config must be a transformers config (or a dict with its model_type), got "
                            f"{type(self.backbone_config).__name__}.")
        if self.efficient is False:
            raise ValueError("efficient=False: a masked LM's decoder is tied to the word embeddings, so every size "
                             "shares it (MRL-E); leave efficient unset or True.")
        if self.precisions is not None:
            raise ValueError(f"precisions={self.precisions!r}: quantisation-aware training is for embeddings; a masked "
                             "LM is trained on token predictions only. Leave precisions unset.")
        super().validate_matryoshka()


def _adds_own_bias(head: nn.Module) -> bool:
    """Whether an LM head's forward adds ``self.bias`` after its decoder (ESM, LUKE, BridgeTower), instead of the
    decoder carrying the (tied) bias as in BERT or RoBERTa."""
    try:
        source = inspect.getsource(type(head).forward)
    except (OSError, TypeError):  # no source to read: the forward pass will tell
        return False
    return "self.bias" in source


class MRLModelForMaskedLM(WrappedModelMixin, PreTrainedModel):
    """Masked LM whose prediction at every size ``m`` in ``nesting_list`` uses only the first ``m`` features of the
    decoder's input, on any masked-LM family with a tied decoder (see the module docstring).

    ``forward(input_ids, attention_mask, labels=...)`` returns ``MRLMaskedLMOutput``; like the families' own
    ``...ForMaskedLM`` it takes ``num_items_in_batch`` (the Trainer's count of masked tokens over gradient accumulation
    and processes), so GA and DDP train on the token-weighted loss of the whole global batch. ``MRLTrainer`` trains it
    with ``DataCollatorForLanguageModeling`` and logs ``loss_dim_{m}``; ``masked_lm_accuracy`` scores it per size.

    Build one from a plain checkpoint with ``from_pretrained(path, nesting_list=[...])`` or from scratch with
    ``MRLModelForMaskedLM(MRLMaskedLMConfig(backbone_config=..., nesting_list=...))``.
    """

    config_class = MRLMaskedLMConfig
    config: MRLMaskedLMConfig
    base_model_prefix = MLM_PREFIX
    input_modalities = ("text",)
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    supports_gradient_checkpointing = True
    accepts_loss_kwargs = True
    _keys_to_ignore_on_load_unexpected = [r"(^|\.)pooler\."]  # a bare base model's pooler
    _plain_settings = frozenset({"nesting_list", "truncate_dim", "relative_importance", "efficient"})
    _auto_class_name = "AutoModelForMaskedLM"

    def __init__(self, config: MRLMaskedLMConfig):
        super().__init__(config)
        config.validate_matryoshka()
        family = config.backbone_config.model_type
        self.mlm = AutoModelForMaskedLM.from_config(config.backbone_config)
        plain_decoder = self.mlm.get_output_embeddings()
        if not isinstance(plain_decoder, nn.Linear) or plain_decoder.in_features != config.matryoshka_embedding_dim:
            raise ValueError(f"the {family!r} masked LM has no linear decoder over its {config.matryoshka_embedding_dim}"
                             f"-wide word embeddings (found {type(plain_decoder).__name__}); MRLModelForMaskedLM nests "
                             "such a decoder only.")
        if family == "mobilebert":  # its head multiplies by [decoder.weight.T, dense.weight] and never calls it
            raise ValueError("the 'mobilebert' masked LM head does not apply its decoder as a layer (it multiplies by "
                             "the decoder's weight joined to another matrix), so MRLModelForMaskedLM cannot nest it.")
        head = next(m for m in self.mlm.modules() if any(c is plain_decoder for c in m.children()))
        if _adds_own_bias(head):
            raise ValueError(f"the {family!r} masked LM head adds a bias of its own after the decoder "
                             f"({type(head).__name__}: decoder(x) + bias), which the nested decoder would replace "
                             "wrongly; MRLModelForMaskedLM nests heads whose decoder carries the bias (BERT, RoBERTa, "
                             "XLM-R, DeBERTa, ModernBERT and the like).")
        if not getattr(config.get_text_config(), "tie_word_embeddings", True):
            raise ValueError(f"the {family!r} config has tie_word_embeddings=False: MRL-E for masked LM nests a decoder "
                             "tied to the word embeddings; set tie_word_embeddings=True.")
        decoder = NestedTiedDecoder(config.nesting_list, plain_decoder.out_features, efficient=True,
                                    bias=plain_decoder.bias is not None)
        if decoder.bias is not None:  # zero, like the families' own MLM biases (the family's model was initialised
            with torch.no_grad():     # before this decoder existed, and its initialisation does not run again)
                decoder.bias.zero_()
        self.mlm.set_output_embeddings(decoder)
        forward_args = inspect.signature(self.mlm.forward).parameters
        self._takes_token_type_ids = "token_type_ids" in forward_args
        self.tokenizer = None
        self.post_init()
        decoder_name = next(name for name, module in self.named_modules() if module is self.get_output_embeddings())
        if f"{decoder_name}.weight" not in (getattr(self, "all_tied_weights_keys", None) or {}):
            raise ValueError(f"the {family!r} masked LM does not tie its decoder to the word embeddings; "
                             "MRLModelForMaskedLM nests a tied decoder only.")

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:  # the decoder sits inside the family's model, whose own _init_weights does not know it
            bias = self.get_output_embeddings().bias
            if bias is not None:  # zero, like the families' own MLM biases; a loaded bias is left alone
                init.zeros_(bias)

    # ---- loading (plain checkpoints: see mrl_hf/modeling/wrapped.py) -------------------------------------------------
    @classmethod
    def _plain_key_mapping(cls, backbone_config, config_dict):
        """A ``...ForMaskedLM`` checkpoint goes under ``mlm.`` as it is; a bare base model (``RobertaModel``, by its
        ``architectures``) under ``mlm.<family prefix>.``."""
        base = backbone_class(backbone_config, AutoModel)
        architectures = config_dict.get("architectures") or []
        if architectures and all(name == base.__name__ for name in architectures):
            return {r"^": f"{MLM_PREFIX}.{base.base_model_prefix}."}
        return {r"^": f"{MLM_PREFIX}."}

    def _check_wrapped_model_loaded(self, path, info) -> None:
        super()._check_wrapped_model_loaded(path, info)
        # A decoder bias the checkpoint lacks (a bare base model; ModernBERT's bias is not tied to a loaded one) is set
        # here: transformers' loading initialises missing weights through the family's own _init_weights, which does
        # not know the nested decoder, so it would stay uninitialised memory.
        decoder = self.get_output_embeddings()
        name = next(n for n, m in self.named_modules() if m is decoder)
        if decoder.bias is None:
            return
        if decoder.bias.is_meta:  # BERT / DeBERTa-v2 from a bare base model: never materialised, nor reported missing
            old = decoder.bias
            new = nn.Parameter(torch.zeros(old.shape, device=decoder.weight.device, dtype=decoder.weight.dtype))
            for module in self.modules():  # the family's own name for it (cls.predictions.bias) too
                for key, value in module._parameters.items():
                    if value is old:
                        module._parameters[key] = new
        elif f"{name}.bias" in set((info or {}).get("missing_keys", ())):
            with torch.no_grad():
                decoder.bias.zero_()

    def _load_extra_files(self, path, kwargs) -> None:
        self.tokenizer = try_load_tokenizer(path, kwargs)

    def _save_extra_files(self, save_directory):
        if getattr(self, "tokenizer", None) is not None:
            self.tokenizer.save_pretrained(str(save_directory))

    # ---- embeddings ---------------------------------------------------------------------------------------------
    def get_input_embeddings(self):
        return self.mlm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.mlm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.mlm.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        self.mlm.set_output_embeddings(new_embeddings)

    # ---- forward ------------------------------------------------------------------------------------------------
    def _family_forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        check_nonempty(input_ids if input_ids is not None else kwargs.get("inputs_embeds"))
        kwargs.pop("return_dict", None)
        if token_type_ids is not None and self._takes_token_type_ids:
            kwargs["token_type_ids"] = token_type_ids  # tokenizers give them to families that have none
        return self.mlm(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)

    def decoder_features(self, input_ids, attention_mask=None, **kwargs) -> torch.Tensor:
        """The decoder's input at every position ``(batch, seq, d)``: the family's head transform of the last hidden
        states."""
        return self._family_forward(input_ids, attention_mask, **kwargs).logits

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        truncate_dim: int | None = None,
        return_logits: bool | None = None,
        smoothing: float = 0.0,
        num_items_in_batch: int | torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MRLMaskedLMOutput | tuple:
        """``truncate_dim``: the size of ``logits`` (default ``config.truncate_dim``, else full; any size 1..d).
        ``smoothing``: label smoothing as in ``torch.nn.CrossEntropyLoss`` (``MRLTrainer`` passes the Trainer's
        ``label_smoothing_factor``). Other keyword arguments (``position_ids``, ``inputs_embeds``,
        ``output_hidden_states``, ...) go to the family's model."""
        dim = truncate_dim if truncate_dim is not None else self.config.truncate_dim
        if dim is not None:  # fail before running the model
            validate_dim(dim, self.config.matryoshka_embedding_dim, name="truncate_dim")
        out = self._family_forward(input_ids, attention_mask, token_type_ids, **kwargs)
        loss, per_dim, logits, predictions = nested_masked_lm(
            self.get_output_embeddings(), out.logits, labels, self.config, truncate_dim=truncate_dim,
            return_logits=return_logits, smoothing=smoothing, num_items_in_batch=num_items_in_batch,
            training=self.training)
        output = MRLMaskedLMOutput(loss=loss, per_dim_losses=per_dim, logits=logits, nested_predictions=predictions,
                                   hidden_states=getattr(out, "hidden_states", None),
                                   attentions=getattr(out, "attentions", None))
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


AutoConfig.register(MRLMaskedLMConfig.model_type, MRLMaskedLMConfig, exist_ok=True)
AutoModelForMaskedLM.register(MRLMaskedLMConfig, MRLModelForMaskedLM, exist_ok=True)
