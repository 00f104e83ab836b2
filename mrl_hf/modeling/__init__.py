from .vision import (MRLResNetConfig, MRLResNetForImageClassification, MRLViTConfig,  # noqa: F401
                     MRLViTForImageClassification, MatryoshkaImageClassifierOutput)
