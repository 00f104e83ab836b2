"""What every mrl_hf model class shares beyond its transformers base class."""
from __future__ import annotations

import dataclasses
import importlib
import math

from transformers import PretrainedConfig
from transformers import initialization as init

from ..heads import MatryoshkaHead


class MatryoshkaPreTrainedMixin:
    """Put before the transformers base class (``class MRLXModel(AtomicSaveMixin, MatryoshkaPreTrainedMixin,
    XPreTrainedModel)``).

    - Initialises every Matryoshka part wherever transformers initialises weights: in a fresh model, and in the
      parts a plain checkpoint lacks (``from_pretrained(plain_checkpoint, efficient=True)``), so no weight is
      left as uninitialised memory. The shared MRL-E weight gets what ``nn.Linear`` gives a fresh layer.
    - ``push_to_hub`` keeps ``PreTrainedModel.push_to_hub``'s signature and uploads the Matryoshka model card.
    - ``from_pretrained`` of a plain checkpoint of the family (``_plain_model_types``, e.g. a ``BertModel``) builds
      the mrl_hf config from it, so nothing warns about the model type and the config is the mrl_hf one through and
      through; a checkpoint of another family is refused with an error naming it.
    """

    _plain_model_types: tuple[str, ...] = ()
    _HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "subfolder", "trust_remote_code")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        if kwargs.get("config") is None and pretrained_model_name_or_path is not None:
            config = cls._config_of_plain_checkpoint(pretrained_model_name_or_path, kwargs)
            if config is not None:
                kwargs["config"] = config
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def _config_of_plain_checkpoint(cls, path, kwargs):
        hub = {k: kwargs[k] for k in cls._HUB_KWARGS if k in kwargs}
        try:
            found, _ = PretrainedConfig.get_config_dict(path, **hub)
        except (OSError, ValueError):  # let from_pretrained report a missing or unreadable checkpoint itself
            return None
        own = cls.config_class.model_type
        model_type = found.get("model_type")
        if model_type in (None, own):
            return None
        if model_type not in cls._plain_model_types:
            runs = ", ".join(repr(t) for t in (own, *cls._plain_model_types))
            raise ValueError(f"{str(path)!r} is a {model_type!r} checkpoint, but {cls.__name__} runs {runs} checkpoints "
                             f"only; it would compute something else than the {model_type!r} model does.")
        fields = {f.name for f in dataclasses.fields(cls.config_class)} - {"dtype"}
        settings = {k: kwargs.pop(k) for k in list(kwargs) if k in fields or k == "num_labels"}
        plain = {k: v for k, v in found.items() if k in fields and k not in ("architectures", "transformers_version")}
        if "num_labels" in settings or "id2label" in settings:  # the new head's classes, not the plain one's
            plain.pop("id2label", None), plain.pop("label2id", None)
        return cls.config_class(**{**plain, **settings})

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MatryoshkaHead) and module.efficient:
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, commit_description: str | None = None,
                    private: bool | None = None, token: bool | str | None = None, revision: str | None = None,
                    create_pr: bool = False, max_shard_size: int | str | None = "50GB",
                    tags: list[str] | None = None) -> str:
        """``PreTrainedModel.push_to_hub`` with the Matryoshka model card (sizes, usage at each size) instead of
        the generic one; ``mrl_hf.hub.push_to_hub`` takes more options (results table, remote code)."""
        tags = list(dict.fromkeys([*(getattr(self, "model_tags", None) or []), *([tags] if isinstance(tags, str)
                                                                                 else tags or [])]))
        kwargs = dict(commit_message=commit_message, commit_description=commit_description, private=private,
                      token=token, revision=revision, create_pr=create_pr, max_shard_size=max_shard_size, tags=tags)
        try:
            # By name, not as a package-relative import: a checkpoint needs no publishing tools to load, and the
            # remote-code copy of a model does not carry them.
            hub = importlib.import_module("mrl_hf.hub")
        except ImportError:  # a remote-code copy where mrl_hf is not installed: transformers' own push
            return super().push_to_hub(repo_id, **kwargs)
        return hub.push_to_hub(self, repo_id, **kwargs)
