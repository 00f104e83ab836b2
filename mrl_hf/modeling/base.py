"""What every mrl_hf model class shares beyond its transformers base class."""
from __future__ import annotations

import importlib


class MatryoshkaHubMixin:
    """``model.push_to_hub(repo_id)`` uploads config, weights, tokenizer/processor, and the generated model card
    and plot (see ``mrl_hf.hub.push_to_hub`` for the arguments)."""

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        # Imported by name, not as a package-relative import: the remote-code copy of a model (mrl_hf.hub.remote_code)
        # follows package imports, and a checkpoint needs no publishing tools to load.
        hub = importlib.import_module("mrl_hf.hub")
        return hub.push_to_hub(self, repo_id, **kwargs)
