"""Model families. Importing this package registers them with the transformers Auto classes."""
from .bert import MRLBertConfig, MRLBertForMaskedLM, MRLBertModel  # noqa: F401
from .masked_lm import MRLMaskedLMConfig, MRLMaskedLMOutput, MRLModelForMaskedLM, masked_lm_accuracy  # noqa: F401,E402
from .vision import (MRLResNetConfig, MRLResNetForImageClassification, MRLViTConfig,  # noqa: F401
                     MRLViTForImageClassification, MatryoshkaImageClassifierOutput)
from .align import MRLAlignConfig, MRLAlignModel, MRLAlignOutput, MRLAlignProcessor  # noqa: F401,E402
from .auto_text import MRLModelForTextEmbedding, MRLTextEmbeddingConfig, MRLTextEmbeddingOutput  # noqa: F401,E402
from .auto_classification import (MatryoshkaSequenceClassifierOutput, MRLModelForSequenceClassification,  # noqa: F401,E402
                                  MRLTextClassificationConfig)
from .auto_vision import (MRLImageConfig, MRLImageEmbeddingOutput, MRLModelForImageClassification,  # noqa: F401,E402
                          MRLModelForImageEmbedding)
