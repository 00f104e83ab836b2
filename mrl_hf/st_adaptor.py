"""A sentence-transformers module that applies a ``MatryoshkaAdaptor`` (normalise, centre, rotate, residual MLP).

Self-contained on purpose: ``export_sentence_transformers`` copies this file as ``mrl_adaptor.py`` into the folder
it writes, and ``SentenceTransformer(folder, trust_remote_code=True)`` loads it from there without mrl_hf. It must
import nothing but torch and sentence-transformers. Its weights are the adaptor's state dict (same names).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from sentence_transformers.base.modules.module import Module
from torch import nn


class MatryoshkaAdaptorModule(Module):
    """``sentence_embedding`` -> ``z + MLP(z)`` with ``z = W (e / |e| - mean)``, as ``mrl_hf.MatryoshkaAdaptor``."""

    config_keys = ["input_dim", "hidden_dim"]

    def __init__(self, input_dim: int, hidden_dim: int = 0):
        super().__init__()
        self.input_dim, self.hidden_dim = int(input_dim), int(hidden_dim)
        self.register_buffer("mean", torch.zeros(self.input_dim))
        self.linear = nn.Linear(self.input_dim, self.input_dim, bias=False)
        self.mlp = (nn.Sequential(nn.Linear(self.input_dim, self.hidden_dim), nn.GELU(),
                                  nn.Linear(self.hidden_dim, self.input_dim)) if self.hidden_dim else None)

    def forward(self, features: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        z = self.linear(F.normalize(features["sentence_embedding"], dim=-1) - self.mean)
        features["sentence_embedding"] = z if self.mlp is None else z + self.mlp(z)
        return features

    def get_embedding_dimension(self) -> int:
        return self.input_dim

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        self.save_config(output_path)
        self.save_torch_weights(output_path, safe_serialization=safe_serialization)

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", token=None, cache_folder=None, revision=None,
             local_files_only: bool = False, **kwargs):
        hub = dict(subfolder=subfolder, token=token, cache_folder=cache_folder, revision=revision,
                   local_files_only=local_files_only)
        module = cls(**cls.load_config(model_name_or_path, **hub))
        return cls.load_torch_weights(model_name_or_path, model=module, **hub)
