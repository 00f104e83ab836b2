"""mrl_hf: Matryoshka Representation Learning for the Hugging Face ecosystem."""
from transformers import AutoConfig

from .config import MatryoshkaConfig, MatryoshkaConfigMixin
from .embeddings import truncate_embeddings
from .heads import MatryoshkaHead
from .losses import (
    MatryoshkaContrastiveLoss,
    MatryoshkaCrossEntropyLoss,
    NestedLoss,
    nested_contrastive_loss,
    nested_cosine_similarities,
    nested_linear_cross_entropy,
)
from .nesting import halving_nesting_list, interpolated_dims, uniform_nesting_list, validate_nesting_list
from .modeling import (  # importing registers the Auto classes
    MRLAlignConfig,
    MRLAlignModel,
    MRLAlignProcessor,
    MRLBertConfig,
    MRLBertForMaskedLM,
    MRLBertModel,
    MRLResNetConfig,
    MRLResNetForImageClassification,
    MRLViTConfig,
    MRLViTForImageClassification,
)

__version__ = "0.1.0"

AutoConfig.register(MatryoshkaConfig.model_type, MatryoshkaConfig, exist_ok=True)

# Loaded on first use: the Trainer, sentence-transformers and FAISS imports cost seconds that
# `import mrl_hf` for inference should not pay.
_LAZY = {
    "MRLTrainer": "trainer",
    "nested_accuracy": "trainer",
    "export_sentence_transformers": "export",
    "PairCollator": "data.collator",
    "AdaptiveClassifier": "adaptive",
    "MatryoshkaIndex": "retrieval",
    "SearchResult": "retrieval",
    "default_funnel_steps": "retrieval",
    "MatryoshkaAdaptor": "adaptor",
    "pca_rotation": "adaptor",
    "attach_adaptor": "adaptor",
    "MatryoshkaDistillationLoss": "distillation",
    "MatryoshkaDistillationTrainer": "distillation",
    "similarity_distillation_loss": "distillation",
    "add_teacher_embeddings": "distillation",
    "DistillationCollator": "distillation",
    "AdaptiveResult": "adaptive",
    "HubPushError": "hub",
    "push_to_hub": "hub",
    "render_model_card": "hub",
    "save_for_hub": "hub",
    "all_gather_with_grad": "distributed",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mrl_hf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
