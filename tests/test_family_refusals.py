"""A family class refuses a checkpoint of a family it cannot run (it would load it with at most a transformers warning
and compute something else) and names the class that runs it."""
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from mrl_hf.modeling import (
    MRLBertForMaskedLM,
    MRLBertModel,
    MRLResNetForImageClassification,
    MRLViTForImageClassification,
)

TEXT = dict(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64)
CASES = {
    "xlm-roberta": TEXT,
    "mpnet": TEXT,
    "modernbert": {**TEXT, "global_attn_every_n_layers": 1, "local_attention": 16, "pad_token_id": 0,
                   "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1, "sep_token_id": 2},
    "convnext": dict(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2),
}


@pytest.mark.parametrize("family", sorted(CASES))
def test_a_checkpoint_of_another_family_is_refused_naming_the_class_that_runs_it(family, tmp_path):
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, **CASES[family])
    AutoModel.from_config(config).save_pretrained(tmp_path / "base")
    if family == "convnext":
        for cls in (MRLResNetForImageClassification, MRLViTForImageClassification):
            with pytest.raises(ValueError, match="'convnext' checkpoint.*Load it with MRLModelForImageClassification"):
                cls.from_pretrained(tmp_path / "base", num_labels=3)
        return
    AutoModelForMaskedLM.from_config(config).save_pretrained(tmp_path / "mlm")
    for cls, folder in ((MRLBertModel, "base"), (MRLBertForMaskedLM, "mlm")):
        with pytest.raises(ValueError, match=f"'{family}' checkpoint.*MRLModelForTextEmbedding.*MRLModelForMaskedLM"):
            cls.from_pretrained(tmp_path / folder)
