"""mrl_hf: Matryoshka Representation Learning for the Hugging Face ecosystem.

Everything is imported on first use (``import mrl_hf`` itself imports neither torch nor transformers, so the
``mrl-hf`` command answers ``--help`` at once). Importing ``mrl_hf.modeling`` (or using any model class) registers the
mrl_hf model types with the transformers Auto classes.
"""
import importlib

__version__ = "0.1.0"

_LAZY = {
    # the core
    "MatryoshkaConfig": "config",
    "MatryoshkaConfigMixin": "config",
    "truncate_embeddings": "embeddings",
    "MatryoshkaHead": "heads",
    "MatryoshkaContrastiveLoss": "losses",
    "MatryoshkaCrossEntropyLoss": "losses",
    "NestedLoss": "losses",
    "nested_contrastive_loss": "losses",
    "nested_cosine_similarities": "losses",
    "nested_linear_cross_entropy": "losses",
    "halving_nesting_list": "nesting",
    "interpolated_dims": "nesting",
    "uniform_nesting_list": "nesting",
    "validate_nesting_list": "nesting",
    # models
    "MRLAlignConfig": "modeling",
    "MRLAlignModel": "modeling",
    "MRLAlignProcessor": "modeling",
    "MRLBertConfig": "modeling",
    "MRLBertForMaskedLM": "modeling",
    "MRLBertModel": "modeling",
    "MRLMaskedLMConfig": "modeling",
    "MRLModelForMaskedLM": "modeling",
    "MRLModelForTextEmbedding": "modeling",
    "MRLTextEmbeddingConfig": "modeling",
    "MRLImageConfig": "modeling",
    "MRLModelForImageClassification": "modeling",
    "MRLModelForImageEmbedding": "modeling",
    "MRLModelForSequenceClassification": "modeling",
    "MRLTextClassificationConfig": "modeling",
    "MRLResNetConfig": "modeling",
    "MRLResNetForImageClassification": "modeling",
    "MRLViTConfig": "modeling",
    "MRLViTForImageClassification": "modeling",
    # training, deployment, publishing
    "MRLTrainer": "trainer",
    "nested_accuracy": "trainer",
    "export_sentence_transformers": "export",
    "PairCollator": "data.collator",
    "AdaptiveClassifier": "adaptive_classification",
    "AdaptiveResult": "adaptive_classification",
    "MatryoshkaIndex": "retrieval",
    "SearchResult": "retrieval",
    "default_funnel_steps": "retrieval",
    "MatryoshkaAdaptor": "adaptor",
    "pca_rotation": "adaptor",
    "mean_centering": "adaptor",
    "attach_adaptor": "adaptor",
    "add_output_rotation": "rotation",
    "freeze_bottom": "freezing",
    "MatryoshkaDistillationLoss": "distillation",
    "MatryoshkaDistillationTrainer": "distillation",
    "similarity_distillation_loss": "distillation",
    "add_teacher_embeddings": "distillation",
    "DistillationCollator": "distillation",
    "HubPushError": "hub",
    "push_to_hub": "hub",
    "render_model_card": "hub",
    "save_for_hub": "hub",
    "all_gather_with_grad": "modeling.gather",
}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mrl_hf' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = sorted(_LAZY)
