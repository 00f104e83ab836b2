"""What the models that wrap any ``transformers`` model share: building that model from ``config.backbone_config`` and
loading plain checkpoints of its family into it.

A wrapping class keeps the wrapped model under one attribute (``base_model_prefix``: ``backbone`` for the embedding and
classification models, ``mlm`` for the masked LM) and says which config fields a plain checkpoint may be given
(``_plain_settings``). ``from_pretrained(plain_checkpoint, nesting_list=..., ...)`` then:

1. reads the checkpoint's own config as ``backbone_config`` and builds the mrl_hf config around it;
2. loads the weights, renaming the checkpoint's keys onto the wrapped model with a ``key_mapping``
   (``_plain_key_mapping``; e.g. a ``ViTForImageClassification``'s ``vit.*`` -> ``backbone.*``) that is dropped
   afterwards, so the model's own saves keep its own layout;
3. refuses a checkpoint none of whose weights landed in the wrapped model, instead of returning random weights.

Checkpoints of another mrl_hf class are refused with the class to use.
"""
from __future__ import annotations

import inspect
import warnings

from transformers import AutoConfig, AutoModel, PretrainedConfig

from .base import MatryoshkaPreTrainedMixin


def backbone_class(config: PretrainedConfig, auto=AutoModel) -> type:
    """The class ``auto.from_config(config)`` builds, or a ``ValueError`` naming the config."""
    try:
        found = auto._model_mapping[type(config)]
    except KeyError:
        raise ValueError(f"{auto.__name__} has no model for a {type(config).__name__} (model_type "
                         f"{config.model_type!r}); the backbone must be a transformers model that "
                         f"{auto.__name__}.from_config builds (remote-code backbones are not supported yet).") from None
    return found[0] if isinstance(found, (list, tuple)) else found


def without_pooler_kwargs(config: PretrainedConfig, keep_pooler: bool = False, auto=AutoModel) -> dict:
    """``{"add_pooling_layer": keep_pooler}`` for the families that have that switch (BERT, RoBERTa, MPNet, ViT, Swin,
    ...), else ``{}``: an unused pooler would only hold parameters without gradients (which DDP rejects)."""
    if "add_pooling_layer" in inspect.signature(backbone_class(config, auto).__init__).parameters:
        return {"add_pooling_layer": keep_pooler}
    return {}


class WrappedModelMixin(MatryoshkaPreTrainedMixin):
    """Put before ``PreTrainedModel``; see the module docstring."""

    _plain_settings: frozenset[str] = frozenset()
    # an embedding model reads the sizes a plain checkpoint states; a classifier's or masked LM's sizes mean other
    # things (its logits, its decoder), and are chosen when it is built
    _reads_stated_contract = False
    _auto_class_name = "AutoModel"  # named in the error for a checkpoint of another mrl_hf class

    def post_init(self):
        # Activation checkpointing works when the wrapped family has it (MPNet, ConvNeXt and ResNet do not), so
        # gradient_checkpointing_enable() refuses with transformers' own error otherwise.
        self.supports_gradient_checkpointing = getattr(self, self.base_model_prefix).supports_gradient_checkpointing
        super().post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained`` for this model's own checkpoints and for plain checkpoints of any
        family it can wrap (see the module docstring); config kwargs set up a plain checkpoint and override the
        settings of an own one, and are validated either way."""
        plain = None
        if kwargs.get("config") is None and pretrained_model_name_or_path is not None:
            plain = cls._plain_checkpoint_config(pretrained_model_name_or_path, kwargs)
        mapping = {}
        if plain is not None:
            kwargs["config"], mapping = plain
            if mapping:
                kwargs["key_mapping"] = {**(kwargs.get("key_mapping") or {}), **mapping}
        want_info = kwargs.get("output_loading_info", False)
        kwargs["output_loading_info"] = True
        result = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model, info = (result[0], result[1]) if isinstance(result, tuple) else (result, None)
        if plain is not None:
            model._forget_load_key_mapping(mapping)
            model._check_wrapped_model_loaded(pretrained_model_name_or_path, info)
        else:
            model._match_own_checkpoint(pretrained_model_name_or_path, info)
        model.config.validate_matryoshka()
        return (model, info) if want_info else model

    @classmethod
    def _plain_checkpoint_config(cls, path, kwargs):
        """For a checkpoint of another model type: ``(this class's config around its config, the key mapping that
        loads its weights)``; ``None`` for this model's own checkpoints. Pops the settings it uses from ``kwargs``."""
        hub = {k: kwargs[k] for k in cls._HUB_KWARGS if k in kwargs}
        try:
            found, _ = PretrainedConfig.get_config_dict(path, **hub)
        except (OSError, ValueError):  # let from_pretrained report a missing or unreadable checkpoint itself
            return None
        model_type = found.get("model_type")
        if model_type in (None, cls.config_class.model_type):
            return None
        if str(model_type).startswith("mrl_"):
            raise ValueError(f"{str(path)!r} is an mrl_hf {model_type!r} checkpoint; load it with its own class "
                             f"({cls._auto_class_name}.from_pretrained), or wrap the plain checkpoint it was made "
                             "from.")
        backbone_config = AutoConfig.from_pretrained(path, **hub)
        settings = {k: kwargs.pop(k) for k in list(kwargs) if k in cls._plain_settings}
        stated = cls._stated_contract(found, settings) if cls._reads_stated_contract else {}
        try:
            config = cls._config_for_plain(backbone_config, {**stated, **settings})
        except ValueError:
            if not stated:
                raise
            warnings.warn(f"{str(path)!r} states Matryoshka settings {stated} that do not fit this model's output "
                          f"(e.g. sizes of a projection it does not have); loaded without them. Pass nesting_list= "
                          "(and truncate_dim=) to choose the sizes.")
            config = cls._config_for_plain(backbone_config, settings)
        return config, cls._plain_key_mapping(backbone_config, found)

    @staticmethod
    def _stated_contract(found: dict, settings: dict) -> dict:
        """The embedding contract a plain checkpoint's config states (a sentence-transformers export, a vLLM / Jina
        config: sizes as ``nesting_list`` or ``matryoshka_dimensions``, the default ``truncate_dim``, the
        normalisation), as ``MRLBertModel`` reads them, for the embedding classes (``_reads_stated_contract``). Sizes
        given by the caller (``nesting_list``, or a new ``embedding_dim``: a projection) replace the stated sizes and
        default size."""
        sizes_given = bool({"nesting_list", "embedding_dim"} & set(settings))
        keys = ("normalize_embeddings",) if sizes_given else (
            "normalize_embeddings", "truncate_dim", "nesting_list", "matryoshka_dimensions")
        return {k: found[k] for k in keys if found.get(k) is not None and k not in settings}

    @classmethod
    def _config_for_plain(cls, backbone_config: PretrainedConfig, settings: dict) -> PretrainedConfig:
        return cls.config_class(backbone_config=backbone_config, **settings)

    @classmethod
    def _plain_key_mapping(cls, backbone_config: PretrainedConfig, config_dict: dict) -> dict[str, str]:
        """A bare base model's keys get ``backbone.`` added by transformers (``base_model_prefix``); a model with a
        task head stores the base model under the family's prefix (``bert.*``, ``vit.*``), renamed here."""
        prefix = backbone_class(backbone_config).base_model_prefix
        return {rf"^{prefix}\.": f"{cls.base_model_prefix}."} if prefix else {}

    def _forget_load_key_mapping(self, mapping: dict[str, str]) -> None:
        # transformers keeps the renamings used at load and reverts them on save_pretrained (to write a checkpoint in
        # the layout it was read from). Ours only map a plain checkpoint onto the wrapped model: saves keep our layout.
        conversions = getattr(self, "_weight_conversions", None)
        if conversions and mapping:
            pairs = {(source, target) for source, target in mapping.items()}
            self._weight_conversions = [
                c for c in conversions
                if (tuple(getattr(c, "source_patterns", []) or []), tuple(getattr(c, "target_patterns", []) or []))
                not in {((s,), (t,)) for s, t in pairs}]

    def _match_own_checkpoint(self, path, info) -> None:
        """Adapt to a checkpoint of this class written by an earlier mrl_hf, from what it lacks (no-op here)."""

    def _check_wrapped_model_loaded(self, path, info) -> None:
        """Refuse a plain checkpoint none of whose weights landed in the wrapped model (keys under a prefix nobody
        maps): transformers would only warn, and every weight would be random."""
        prefix = self.base_model_prefix
        wrapped = getattr(self, prefix)
        missing = set((info or {}).get("missing_keys", ()))
        weights = {f"{prefix}.{name}" for name, _ in wrapped.named_parameters()}
        if weights and weights <= missing:
            unexpected = sorted((info or {}).get("unexpected_keys", ()))[:5]
            raise ValueError(
                f"no weight of {str(path)!r} fits the {type(wrapped).__name__} (every weight would be random); its "
                f"keys look like {unexpected}. Load the checkpoint with its transformers class, save it with "
                "save_pretrained(folder) and load that folder.")

