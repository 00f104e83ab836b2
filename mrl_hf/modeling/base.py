"""What every mrl_hf model class shares beyond its transformers base class."""
from __future__ import annotations

import importlib
import math

from transformers import initialization as init

from ..heads import MatryoshkaHead


class MatryoshkaPreTrainedMixin:
    """Put before the transformers base class (``class MRLXModel(AtomicSaveMixin, MatryoshkaPreTrainedMixin,
    XPreTrainedModel)``).

    - Initialises every Matryoshka part wherever transformers initialises weights: in a fresh model, and in the
      parts a plain checkpoint lacks (``from_pretrained(plain_checkpoint, efficient=True)``), so no weight is
      left as uninitialised memory. The shared MRL-E weight gets what ``nn.Linear`` gives a fresh layer.
    - ``push_to_hub`` keeps ``PreTrainedModel.push_to_hub``'s signature and uploads the Matryoshka model card.
    """

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
