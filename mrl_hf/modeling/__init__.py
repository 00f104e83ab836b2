"""Model families. Importing this package registers them with the transformers Auto classes."""
from .bert import MRLBertConfig, MRLBertForMaskedLM, MRLBertModel, masked_lm_accuracy
