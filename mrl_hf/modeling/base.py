"""What every mrl_hf model class shares beyond its transformers base class."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from pathlib import Path

from transformers import PretrainedConfig
from transformers import initialization as init

from ..config import FULL_SIZE_WARNING
from ..heads import MatryoshkaHead


class MatryoshkaPreTrainedMixin:
    """Put before the transformers base class (``class MRLXModel(MatryoshkaPreTrainedMixin, XPreTrainedModel)``).

    - Initialises every Matryoshka part wherever transformers initialises weights: in a fresh model, and in the
      parts a plain checkpoint lacks (``from_pretrained(plain_checkpoint, efficient=True)``), so no weight is
      left as uninitialised memory. The shared MRL-E weight gets what ``nn.Linear`` gives a fresh layer.
    - ``from_pretrained`` of a plain checkpoint of the family (``_plain_model_types``, e.g. a ``BertModel``) builds
      the mrl_hf config from it, so nothing warns about the model type and the config is the mrl_hf one through and
      through; a checkpoint of another family is refused with an error naming it.
    - ``save_pretrained(dir)`` commits the model's files (config, weights, tokenizer or processor,
      sentence-transformers files, and the remote code with ``auto_map`` unless ``remote_code=False``) into ``dir``
      as one set (``mrl_hf.saving.owned_files``, owner "model"): a crash or an error mid-save leaves the previous
      checkpoint intact, stale weight shards of an older save are removed, and nothing else in ``dir`` is touched.
      ``push_to_hub=True`` pushes after the local save is committed. ``from_pretrained`` of a local folder reads it
      under ``mrl_hf.saving.reading``, names a missing path, and turns safetensors' error on a truncated file into a
      ``ValueError``. Subclasses add their own files (tokenizer, processor) in ``_save_extra_files``.
    - ``push_to_hub`` keeps ``PreTrainedModel.push_to_hub``'s signature and uploads the Matryoshka model card.

    The saving and publishing tools are imported where they are used, by absolute name and inside ``try``: the
    remote-code copy of a model (``mrl_hf.hub.remote_code``) carries only the modeling code, and there these
    methods fall back to transformers' own.
    """

    _plain_model_types: tuple[str, ...] = ()
    _class_for_any_family = "the mrl_hf class for any backbone (docs/any_backbone.md)"
    _HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "subfolder", "trust_remote_code")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            from mrl_hf.saving import missing_checkpoint_error, reading
        except ImportError:  # a remote-code copy without mrl_hf
            missing_checkpoint_error, reading = (lambda path: None), (lambda path: contextlib.nullcontext())
        local = pretrained_model_name_or_path is not None
        missing = missing_checkpoint_error(pretrained_model_name_or_path) if local else None
        if missing is not None:
            raise missing
        from safetensors import SafetensorError

        try:
            with reading(pretrained_model_name_or_path) if local else contextlib.nullcontext():
                if kwargs.get("config") is None and local:
                    config = cls._config_of_plain_checkpoint(pretrained_model_name_or_path, kwargs)
                    if config is not None:
                        kwargs["config"] = config
                with warnings.catch_warnings():
                    if "nesting_list" in kwargs:  # the sizes asked for replace the file's list: no word about it
                        warnings.filterwarnings("ignore", message=FULL_SIZE_WARNING)
                    result = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
                model = result[0] if isinstance(result, tuple) else result
                with warnings.catch_warnings():  # AutoTokenizer reads the config again: said once is enough
                    warnings.filterwarnings("ignore", message=FULL_SIZE_WARNING)
                    model._load_extra_files(pretrained_model_name_or_path, kwargs)
                return result
        except SafetensorError as exc:
            raise ValueError(f"the safetensors weights in {str(pretrained_model_name_or_path)!r} are truncated or "
                             f"corrupt ({exc}); restore the checkpoint from a good copy (mrl_hf saves are atomic, "
                             "so a crashed save never causes this) or re-save the model.") from exc

    def _load_extra_files(self, path, kwargs) -> None:
        """Load what belongs next to the weights (a tokenizer), under the weights' read lock: a save running
        meanwhile cannot hand the model one save's weights and another's tokenizer."""

    def _save_extra_files(self, save_directory: str) -> None:
        """Write files that belong with the weights (tokenizer, processor) into ``save_directory``."""

    def _sync_config(self) -> None:
        """Bring config fields that mirror a submodule up to date with it before the config is written."""

    def write_files(self, directory, *args, remote_code: bool = True, **kwargs) -> None:
        """Write the checkpoint's files into ``directory`` as they are, without the commit of ``save_pretrained``
        (for writers that commit a larger set of files, such as ``save_for_hub``)."""
        self._sync_config()
        own_code = type(self).__module__.startswith("mrl_hf.")  # a copy's own code is copied by transformers
        auto_map = getattr(self.config, "auto_map", None)
        if not remote_code and own_code and auto_map is not None:  # loaded from a save with code: no code, no map
            del self.config.auto_map
        try:
            super().save_pretrained(str(directory), *args, **kwargs)
        finally:
            if auto_map is not None:
                self.config.auto_map = auto_map
        self._save_extra_files(str(directory))
        if remote_code and own_code:
            try:
                from mrl_hf.hub.remote_code import write_remote_code
            except ImportError:
                return
            write_remote_code(type(self), directory)

    _PUSH_KEYS = ("repo_id", "commit_message", "commit_description", "private", "token", "create_pr", "revision",
                  "tags")

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, push_to_hub: bool = False,
                        remote_code: bool = True, **kwargs):
        self._sync_config()
        try:
            from mrl_hf.saving import is_weight_file, owned_files
        except ImportError:  # a remote-code copy without mrl_hf: transformers' own save (which copies the code)
            out = super().save_pretrained(save_directory, *args, is_main_process=is_main_process,
                                          push_to_hub=push_to_hub, **kwargs)
            if is_main_process:  # the tokenizer and sentence-transformers files, as mrl_hf's save writes them
                self._save_extra_files(str(save_directory))
            return out
        if not is_main_process:  # only the main process writes; others may still take part in gathering weights
            return super().save_pretrained(save_directory, *args, is_main_process=False, **kwargs)
        push = {k: kwargs.pop(k) for k in self._PUSH_KEYS if k in kwargs}
        with owned_files(save_directory, "model", replaces=is_weight_file) as staging:
            self.write_files(staging, *args, remote_code=remote_code, **kwargs)
        if push_to_hub:
            repo_id = push.pop("repo_id", None) or Path(save_directory).absolute().name
            return self.push_to_hub(repo_id, max_shard_size=kwargs.get("max_shard_size", "50GB"),
                                    remote_code=remote_code, **push)
        return None

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
                             f"only; it would compute something else than the {model_type!r} model does. Load it with "
                             f"{cls._class_for_any_family}, which runs any family.")
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
                    tags: list[str] | None = None, remote_code: bool = True) -> str:
        """``PreTrainedModel.push_to_hub`` with the Matryoshka model card (sizes, usage at each size) instead of
        the generic one; ``remote_code=False`` pushes no modeling code (as ``save_pretrained(remote_code=False)``
        saves none); ``mrl_hf.hub.push_to_hub`` takes more options (a results table)."""
        tags = list(dict.fromkeys([*(getattr(self, "model_tags", None) or []), *([tags] if isinstance(tags, str)
                                                                                 else tags or [])]))
        kwargs = dict(commit_message=commit_message, commit_description=commit_description, private=private,
                      token=token, revision=revision, create_pr=create_pr, max_shard_size=max_shard_size, tags=tags)
        try:
            from mrl_hf.hub import push_to_hub
        except ImportError:  # a remote-code copy where mrl_hf is not installed: transformers' own push
            return super().push_to_hub(repo_id, **kwargs)
        return push_to_hub(self, repo_id, remote_code=remote_code, **kwargs)
